"""Optimisers for trsplat: the 3DGS Adam recipe and the 3DGS²-TR trust-region machinery."""
