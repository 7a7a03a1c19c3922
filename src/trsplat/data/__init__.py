"""Datasets: COLMAP, NeRF-synthetic (Blender), instant-ngp and nerfstudio readers, lens
undistortion and its cache, images and scenes (docs/captures.md)."""

from trsplat.data.cache import UndistortCache
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
from trsplat.data.transforms import read_transforms, read_transforms_points
from trsplat.data.undistort import Lens, Pinhole, pinhole_for

__all__ = [
    "ColmapCamera",
    "ColmapImage",
    "ColmapModel",
    "Frame",
    "ImageView",
    "Lens",
    "Pinhole",
    "Scene",
    "detect_format",
    "init_gaussians",
    "load_image",
    "load_scene",
    "parse_background",
    "pinhole_for",
    "random_init_box",
    "read_model",
    "read_transforms",
    "read_transforms_points",
    "UndistortCache",
]
