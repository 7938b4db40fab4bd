"""Merge quality on MiniLM fine-tunes (``python -m benchmarks.quality.run``; see README.md here)."""
