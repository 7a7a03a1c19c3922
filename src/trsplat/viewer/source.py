"""What ``trsplat view`` shows: the Gaussians of a run folder or a PLY, and the run's cameras.

A run folder gives the Gaussians of its checkpoint (the SH degree active at that iteration and
the run's background) and, where its capture folder is still there, the training and test cameras
with their images. A PLY gives Gaussians only (all SH bands, white background).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trsplat.config import TrainConfig
from trsplat.data.images import parse_background
from trsplat.data.scene import Frame, detect_format, load_scene
from trsplat.errors import TrsplatError
from trsplat.gaussians import MAX_SH_DEGREE, Gaussians, load_ply
from trsplat.training.evaluation import active_sh_degree
from trsplat.training.rundir import RunDir

WHITE = (1.0, 1.0, 1.0)


@dataclass
class ViewScene:
    """Gaussians to show, how to render them, and the cameras (empty lists when unknown)."""

    name: str
    gaussians: Gaussians
    sh_degree: int = MAX_SH_DEGREE
    background: tuple[float, float, float] = WHITE
    iteration: int | None = None
    config: TrainConfig | None = None
    train: list[Frame] = field(default_factory=list)
    test: list[Frame] = field(default_factory=list)


def load_gaussians(path: str | Path) -> ViewScene:
    """The Gaussians of a run folder (its checkpoint) or a 3DGS PLY; one-line errors otherwise.
    Cameras are loaded separately (:func:`load_cameras`), since decoding images takes a while."""
    path = Path(path)
    if path.is_file():
        return ViewScene(name=path.stem, gaussians=_some(load_ply(path), path))
    if not path.is_dir():
        raise TrsplatError(f"{path}: no such run folder or PLY file")
    run = RunDir(path)
    if not run.has_checkpoint():
        if run.ply_path.is_file():
            return ViewScene(name=path.name, gaussians=_some(load_ply(run.ply_path), run.ply_path))
        raise TrsplatError(f"{path}: not a trsplat run folder (no {RunDir.CHECKPOINT} or {RunDir.PLY})")
    cfg = run.read_config()
    ckpt = run.load_checkpoint()
    try:
        gaussians = Gaussians.from_params(ckpt["params"])
        iteration = int(ckpt["iteration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrsplatError(f"{run.checkpoint_path}: bad checkpoint ({exc})") from None
    return ViewScene(name=path.name, gaussians=_some(gaussians, run.checkpoint_path),
                     sh_degree=active_sh_degree(max(iteration, 1), cfg), iteration=iteration, config=cfg)


def _some(gaussians: Gaussians, path: Path) -> Gaussians:
    """``gaussians``, unless there are none (nothing to show is a mistake, not an empty page)."""
    if len(gaussians) == 0:
        raise TrsplatError(f"{path}: holds no Gaussians, nothing to show")
    return gaussians


def scene_background(cfg: TrainConfig) -> str:
    """The run's background name, as training chose it (``auto``: black for COLMAP, else white)."""
    background = cfg.scene.background
    if background == "auto":
        background = "black" if detect_format(cfg.scene.data)[0] == "colmap" else "white"
    return background


def load_cameras(view: ViewScene) -> None:
    """Fill ``view.train``, ``view.test`` and ``view.background`` from the run's capture, loaded
    as training loaded it. Raises :class:`TrsplatError` when the capture cannot be read."""
    cfg = view.config
    if cfg is None:
        return
    s = cfg.scene
    if not s.data or not Path(s.data).expanduser().exists():
        raise TrsplatError(f"the run's capture folder {s.data!r} is not there; cameras are not shown")
    scene = load_scene(s.data, downscale=s.downscale, background=scene_background(cfg), llffhold=s.llffhold,
                       max_test_views=s.max_test_views)
    view.train, view.test = list(scene.train), list(scene.test)
    view.background = tuple(float(c) for c in scene.background)


def background_of(view: ViewScene) -> tuple[float, float, float]:
    """The background the run trained with, known before its images are loaded."""
    if view.config is None:
        return view.background
    try:
        return tuple(float(c) for c in parse_background(scene_background(view.config)))
    except TrsplatError:  # the capture is gone: its format, hence "auto", is unknown
        return view.background
