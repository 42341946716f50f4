"""Benchmarks of vitmsn against transformers, timm and lightly; see docs/BENCHMARKS.md."""
