"""Benchmarks: rendering speed per backend (:mod:`trsplat.bench.render_bench`)."""
