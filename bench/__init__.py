"""Benchmarks (not tests). ``python -m bench [area ...]`` runs ``bench/bench_<area>.py`` modules."""
