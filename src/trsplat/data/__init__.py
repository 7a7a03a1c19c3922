"""Datasets: COLMAP, NeRF-synthetic (Blender) and instant-ngp readers, images and scenes."""

from trsplat.data.colmap import ColmapCamera, ColmapImage, ColmapModel, read_model
from trsplat.data.images import ImageView, load_image, parse_background
from trsplat.data.scene import (
    Frame,
    Scene,
    detect_format,
    init_gaussians,
    load_scene,
    random_init_box,
)
from trsplat.data.transforms import read_transforms

__all__ = [
    "ColmapCamera",
    "ColmapImage",
    "ColmapModel",
    "Frame",
    "ImageView",
    "Scene",
    "detect_format",
    "init_gaussians",
    "load_image",
    "load_scene",
    "parse_background",
    "random_init_box",
    "read_model",
    "read_transforms",
]
