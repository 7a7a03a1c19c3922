"""``trsplat view RUN_DIR|FILE.ply``: serve a saved scene until Ctrl-C."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from trsplat.errors import TrsplatError, warn
from trsplat.viewer.app import SceneViewer
from trsplat.viewer.source import ViewScene, background_of, load_cameras, load_gaussians


def _add_cameras(viewer: SceneViewer, view: ViewScene) -> None:
    """Load the run's capture (decoding its images may take a while) and add its cameras."""
    try:
        load_cameras(view)
    except TrsplatError as exc:
        warn(str(exc))
        viewer.no_cameras(f"No cameras: {exc}")
        return
    viewer.set_cameras(view.train, view.test)


def view(target: str | Path, *, host: str = "127.0.0.1", port: int = 8080, renderer: str = "browser",
         resolution: int = 256, max_splats: int | None = None, backend: str = "auto") -> int:
    """Serve ``target`` (a run folder or a 3DGS PLY); prints the address and blocks until Ctrl-C.
    The page opens as soon as the Gaussians are loaded; the cameras follow."""
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C/SIGINT stops the viewer even when it was started with SIGINT ignored (a background
        # job of a non-interactive shell), where Python installs no KeyboardInterrupt handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
    scene = load_gaussians(target)
    viewer = SceneViewer(host=host, port=port, title=f"trsplat view {scene.name}", renderer=renderer,
                         resolution=resolution, max_splats=max_splats, backend=backend,
                         background=background_of(scene))
    try:
        caption = f"**{scene.name}**" + (f" · iteration {scene.iteration:,}" if scene.iteration is not None else "")
        viewer.look_at_gaussians(scene.gaussians)
        viewer.set_gaussians(scene.gaussians, scene.sh_degree, caption)
        if scene.config is not None:
            threading.Thread(target=_add_cameras, args=(viewer, scene), daemon=True, name="trsplat-cameras").start()
        else:
            viewer.no_cameras("No cameras: a PLY file holds only the Gaussians.")
        print(f"trsplat: viewer at {viewer.url} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        viewer.close()
