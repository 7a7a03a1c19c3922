"""Optimisers for trsplat: the 3DGS Adam recipe and the 3DGS²-TR trust-region machinery
(``docs/optimizer.md``, ``docs/trust_region.md``)."""
