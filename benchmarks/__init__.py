"""The benchmarks of mergekit-cabs, run from the repository root as modules
(``python -m benchmarks.speed.run``, ``python -m benchmarks.quality.run``). Not installed
with the package. Kept import-free: the speed benchmark's light launcher imports it."""
