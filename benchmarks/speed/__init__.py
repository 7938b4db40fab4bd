"""Wall time and memory of merges (``python -m benchmarks.speed.run``, ``.kernels``,
``.profile_merge``, ``.compile_time``; see README.md here). Kept import-free: the light
launcher ``measure_child`` imports it."""
