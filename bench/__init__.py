"""Benchmarks of dropinf: compressors, overhead, scale, K-FAC statistics and the peer comparison.

Scripts run from the repository root (``python bench/scale.py``); the peer benchmark
(``bench/peers.py``) adapts each peer library in ``bench.adapters``, and ``bench.lds`` holds the
linear datamodeling score, which retrains models. May import anything of dropinf; dropinf never
imports bench.
"""
