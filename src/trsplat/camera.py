"""Pinhole cameras in the COLMAP/OpenCV convention.

Axes: x right, y down, z forward (the camera looks down +z). Intrinsics are in pixels in COLMAP's
continuous convention, where the centre of pixel (i, j) is at (i + 0.5, j + 0.5). The renderer
converts to INRIA's pixel-index convention (centres at integers) by subtracting 0.5 from cx, cy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Camera:
    """One posed pinhole camera.

    Attributes:
        width, height: image size in pixels.
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels (COLMAP continuous convention; W/2, H/2 is centred).
        world_to_camera: (4, 4) float32 rigid transform, world -> camera (OpenCV axes).
        name: image name, for messages and output file names.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_camera: torch.Tensor
    name: str = ""
    _center: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def camera_center(self) -> torch.Tensor:
        """(3,) camera centre in world coordinates."""
        if self._center is None:
            w2c = self.world_to_camera.double()
            self._center = (-w2c[:3, :3].T @ w2c[:3, 3]).float()
        return self._center

    @property
    def fov_x(self) -> float:
        return 2.0 * math.atan(self.width / (2.0 * self.fx))

    @property
    def fov_y(self) -> float:
        return 2.0 * math.atan(self.height / (2.0 * self.fy))

    def scaled(self, factor: float) -> "Camera":
        """The same camera for an image resized by ``factor`` (e.g. 0.25 for --downscale 4).

        The new size is ``round(width * factor)`` and the intrinsics scale with the actual size
        ratio per axis, so the principal point stays at the same relative position.
        """
        new_w = max(1, round(self.width * factor))
        new_h = max(1, round(self.height * factor))
        sx, sy = new_w / self.width, new_h / self.height
        return Camera(
            width=new_w,
            height=new_h,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            world_to_camera=self.world_to_camera,
            name=self.name,
        )

    def to(self, device: torch.device | str) -> "Camera":
        return Camera(
            self.width, self.height, self.fx, self.fy, self.cx, self.cy,
            self.world_to_camera.to(device), self.name,
        )


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(4, 4) world->camera matrix (OpenCV axes) for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear upwards in the image (camera -y).
    """
    eye, target, up = (t.double() for t in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, -up)
    if x.norm() < 1e-9:  # up parallel to viewing direction: pick any perpendicular axis
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye
    return w2c.float()
