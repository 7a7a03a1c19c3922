"""trsplat: 3D Gaussian Splatting trained with Adam or the 3DGS²-TR second-order optimizer."""

__version__ = "0.1.0"
