"""The browser viewer (viser): ``trsplat view`` of a run folder or a PLY, and the live viewer of
``trsplat train --viewer``. Layer: above training, below the command (docs/viewer.md)."""

from trsplat.viewer.app import RENDERERS, SceneViewer, check_port
from trsplat.viewer.command import view
from trsplat.viewer.live import LiveViewer
from trsplat.viewer.source import ViewScene, load_cameras, load_gaussians

__all__ = ["LiveViewer", "RENDERERS", "SceneViewer", "ViewScene", "check_port", "load_cameras", "load_gaussians",
           "view"]
