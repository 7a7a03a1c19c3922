"""The viewer page: a viser server with the splats, the cameras and the controls (docs/viewer.md).

Threads: viser serves the page and runs the GUI callbacks in its own threads; everything that
costs time (turning Gaussians into splats, trsplat renders) runs in one worker thread of this
module, newest request first, so neither the caller (the training loop of ``--viewer``) nor the
page waits for it.
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import threading
import time
import traceback
from typing import Callable

import numpy as np
import torch

from trsplat.data.scene import Frame
from trsplat.errors import TrsplatError, warn
from trsplat.gaussians import Gaussians
from trsplat.render import render
from trsplat.render.backends import resolve_backend
from trsplat.viewer.splats import (SplatArrays, camera_from_pose, camera_pose, scaled_size, splat_arrays,
                                   wxyz_to_rotation)

RENDERERS = ("browser", "trsplat")
"""``browser``: the page draws the splats (WebGL, DC colour); ``trsplat``: this process renders
the client's view with trsplat's renderer and sends it as an image."""
MAX_TRAIN_FRUSTUMS = 300
THUMBNAIL_PX = 96
PAIR_PX = 256
TRAIN_COLOR, TEST_COLOR, CHOSEN_COLOR = (90, 90, 90), (235, 120, 20), (30, 160, 40)


def check_port(host: str, port: int) -> None:
    """A one-line error unless ``host:port`` can be listened on (viser itself would silently
    move to the next free port)."""
    if not 0 <= port <= 65535:
        raise TrsplatError(f"--port {port}: expected 0 (any free port) to 65535")
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise TrsplatError(f"--host {host}: unknown address ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise TrsplatError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                               f"is another viewer running? choose another --port") from None


class Worker:
    """One background thread running jobs by key; a newer job with the same key replaces a
    waiting one (a camera that moved twice is rendered once)."""

    def __init__(self) -> None:
        self.jobs: dict[object, Callable[[], None]] = {}
        self.cond = threading.Condition()
        self.stopped = False
        self.busy_seconds = 0.0  # the last job's duration
        self.thread = threading.Thread(target=self._run, name="trsplat-viewer", daemon=True)
        self.thread.start()

    def submit(self, key: object, job: Callable[[], None]) -> None:
        with self.cond:
            self.jobs.pop(key, None)
            self.jobs[key] = job
            self.cond.notify()

    def idle(self) -> bool:
        with self.cond:
            return not self.jobs

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.jobs.clear()
            self.cond.notify()
        self.thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
                key = next(iter(self.jobs))
                job = self.jobs.pop(key)
            start = time.perf_counter()
            try:
                job()
            except Exception:  # a failed render must not end the viewer; say what happened
                if not self.stopped:
                    warn(f"viewer: {traceback.format_exc().strip().splitlines()[-1]}")
            self.busy_seconds = time.perf_counter() - start


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _thumbnail(image: torch.Tensor, longest: int) -> np.ndarray:
    h, w = image.shape[:2]
    step = max(1, math.ceil(max(h, w) / longest))
    return _uint8(image[::step, ::step])


class SceneViewer:
    """A viser server showing Gaussians and cameras (``trsplat view``; the page of ``--viewer``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8080, title: str = "trsplat",
                 renderer: str = "browser", resolution: int = 256, max_splats: int | None = None,
                 backend: str = "auto", background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        import viser

        if renderer not in RENDERERS:
            raise TrsplatError(f"--renderer {renderer!r}: choose one of {', '.join(RENDERERS)}")
        if not 32 <= resolution <= 4096:
            raise TrsplatError(f"--resolution {resolution}: expected 32 to 4096 pixels")
        if max_splats is not None and max_splats < 1:
            raise TrsplatError(f"--max-splats {max_splats}: expected at least 1")
        check_port(host, port)
        self.backend = resolve_backend(backend)
        self.background = background
        self.max_splats = max_splats
        self.gaussians: Gaussians | None = None
        self.sh_degree = 3
        self.caption = ""
        self.frames: dict[str, list[Frame]] = {"train": [], "test": []}
        self.chosen: dict[int, tuple[str, int]] = {}  # client id -> the camera it jumped to
        self.frustums: dict[str, list] = {"train": [], "test": []}
        self.inside: tuple[str, int] | None = None  # the frustum hidden since a page looks through it
        self.splats = None
        self.drawn = 0
        self.n_clients = 0
        self.connect_callbacks: list[Callable[[], None]] = []
        self.lock = threading.Lock()
        self.worker = Worker()
        with contextlib.redirect_stdout(io.StringIO()):  # viser's banner: we print one line of our own
            self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        # no share button: it would ask viser's share service on the internet for a public address
        self.server.gui.configure_theme(show_share_button=False, control_width="medium")
        if port and self.server.get_port() != port:  # taken between our check and viser's bind
            self.server.stop()
            self.worker.stop()
            raise TrsplatError(f"--port {port}: {host}:{port} is in use; choose another --port")
        self.host, self.port = host, self.server.get_port()
        self._build_gui(renderer, resolution)
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- the page's controls ------------------------------------------------------------------
    def _build_gui(self, renderer: str, resolution: int) -> None:
        gui = self.server.gui
        self.status = gui.add_markdown("loading…", order=0)
        with gui.add_folder("View", order=10):
            self.renderer = gui.add_dropdown(
                "renderer", RENDERERS, initial_value=renderer,
                hint="browser: the page draws the splats (colour without view dependence); trsplat: "
                     "the training renderer (all SH bands), drawn here and sent as an image")
            self.resolution = gui.add_slider("trsplat pixels", 64, 1024, 32, int(min(max(resolution, 64), 1024)),
                                             hint="longest side of trsplat's image (smaller = faster)")
            self.splat_share = gui.add_slider("browser splats %", 1, 100, 1, 100,
                                              hint="draw only the largest, most opaque splats (faster)")
        with gui.add_folder("Cameras", order=20):
            self.show_train = gui.add_checkbox("train cameras", True)
            self.show_test = gui.add_checkbox("test cameras", True)
            self.previous_test = gui.add_button("previous test camera")
            self.next_test = gui.add_button("next test camera")
            self.camera_text = gui.add_markdown("Click a camera (orange: test, grey: train) to look through it.")
            self.pair = gui.add_image(np.full((8, 16, 3), 255, np.uint8), label="render | ground truth",
                                      visible=False)
        self.renderer.on_update(lambda _: self._apply_renderer())
        self.resolution.on_update(lambda _: self._rerender_all())
        self.splat_share.on_update(lambda _: self._send_splats())
        self.show_train.on_update(lambda _: self._show_frustums("train", self.show_train.value))
        self.show_test.on_update(lambda _: self._show_frustums("test", self.show_test.value))
        self.previous_test.on_click(lambda e: self._step_camera(e.client, -1))
        self.next_test.on_click(lambda e: self._step_camera(e.client, +1))

    def set_status(self, text: str) -> None:
        self.status.content = text

    def _on_connect(self, client) -> None:
        with self.lock:
            self.n_clients += 1
        self._apply_renderer_to(client)
        client.camera.on_update(lambda camera: self._camera_moved(camera.client))
        for callback in self.connect_callbacks:
            callback()

    def _on_disconnect(self, client) -> None:
        with self.lock:
            self.n_clients = max(0, self.n_clients - 1)
            self.chosen.pop(client.client_id, None)

    # -- Gaussians ------------------------------------------------------------------------------
    def set_gaussians(self, gaussians: Gaussians, sh_degree: int, caption: str = "") -> None:
        """Show ``gaussians`` (kept by reference: pass a copy if they change); the splats are
        converted and sent by the worker."""
        with self.lock:
            self.gaussians, self.sh_degree, self.caption = gaussians, sh_degree, caption
        self._send_splats()
        self._rerender_all()

    def _send_splats(self) -> None:
        self.worker.submit("splats", self._send_splats_now)

    def _send_splats_now(self) -> None:
        with self.lock:
            gaussians = self.gaussians
        if gaussians is None:
            return
        if self.renderer.value != "browser":  # no splats in the page at all: it only shows images
            if self.splats is not None:
                self.splats.remove()
                self.splats = None
            self.drawn = 0
            self.set_status(self.status_text(len(gaussians)))
            return
        share = self.splat_share.value / 100.0
        limit = max(1, int(len(gaussians) * share)) if share < 1 else None
        if self.max_splats is not None:
            limit = min(limit or self.max_splats, self.max_splats)
        arrays: SplatArrays = splat_arrays(gaussians, limit)
        self.splats = self.server.scene.add_gaussian_splats(
            "/gaussians", centers=arrays.centers, covariances=arrays.covariances, rgbs=arrays.rgbs,
            opacities=arrays.opacities, scale=arrays.unit)
        self.drawn = len(arrays)
        self.set_status(self.status_text(arrays.total))

    def status_text(self, total: int) -> str:
        caption = f"{self.caption}  \n" if self.caption else ""
        drawn = (f"{self.drawn:,} drawn by the browser (opacity ≥ 1/255)" if self.renderer.value == "browser"
                 else "drawn by trsplat")
        return f"{caption}{total:,} Gaussians, {drawn}"

    def look_at_gaussians(self, gaussians: Gaussians) -> None:
        """Start new pages looking at the bulk of ``gaussians`` (for a PLY, which has no cameras)."""
        means = gaussians.means.detach().cpu().double().numpy()
        centre = np.median(means, axis=0)
        radius = float(np.quantile(np.linalg.norm(means - centre, axis=1), 0.8)) or 1.0
        direction = np.array([1.0, -1.0, 0.6]) / np.linalg.norm([1.0, -1.0, 0.6])
        self.server.initial_camera.position = centre + 2.5 * radius * direction
        self.server.initial_camera.look_at = centre

    # -- cameras ----------------------------------------------------------------------------------
    def set_cameras(self, train: list[Frame], test: list[Frame]) -> None:
        """Add the frustums (click: look through the camera) and orient the scene by them."""
        stride = max(1, math.ceil(len(train) / MAX_TRAIN_FRUSTUMS))
        shown_train = list(range(0, len(train), stride))
        self.frames = {"train": list(train), "test": list(test)}
        frames = list(train) + list(test)
        if not frames:
            return
        centres = np.stack([camera_pose(f.camera)[1] for f in frames])
        spread = float(np.linalg.norm(centres - centres.mean(0), axis=1).max()) or 1.0
        ups = np.stack([-wxyz_to_rotation(camera_pose(f.camera)[0])[:, 1] for f in train or test])
        up = ups.mean(0)
        if np.linalg.norm(up) > 1e-6:
            self.server.scene.set_up_direction(up / np.linalg.norm(up))
        first = (test or train)[0]  # new pages start a little behind it, so that its frustum shows
        wxyz, position = camera_pose(first.camera)
        forward = wxyz_to_rotation(wxyz)[:, 2]
        self.server.initial_camera.position = position - 0.5 * spread * forward
        self.server.initial_camera.look_at = position + spread * forward
        self.server.initial_camera.fov = first.camera.fov_y
        for split, indices, color in (("train", shown_train, TRAIN_COLOR), ("test", range(len(test)), TEST_COLOR)):
            handles = []
            for i in indices:
                frame = self.frames[split][i]
                wxyz, position = camera_pose(frame.camera)
                handle = self.server.scene.add_camera_frustum(
                    f"/cameras/{split}/{i:04d}", fov=frame.camera.fov_y,
                    aspect=frame.camera.width / frame.camera.height, scale=0.06 * spread,
                    thickness=0.004 * spread, color=color, image=_thumbnail(frame.image, THUMBNAIL_PX),
                    format="jpeg", wxyz=wxyz, position=position)
                handle.on_click(lambda event, s=split, k=i: self.go_to(event.client, s, k))
                handles.append(handle)
            self.frustums[split] = handles

    def no_cameras(self, reason: str) -> None:
        """Say on the page why there are no cameras, instead of controls that would do nothing."""
        for control in (self.show_train, self.show_test, self.previous_test, self.next_test):
            control.visible = False
        self.camera_text.content = reason

    def _show_frustums(self, split: str, visible: bool) -> None:
        for k, handle in enumerate(self.frustums[split]):
            handle.visible = visible and (split, k) != self.inside

    def _frustum_index(self, split: str, index: int) -> int | None:
        """Position in ``self.frustums[split]`` of the frustum of frame ``index`` (train frustums are thinned)."""
        names = [h.name for h in self.frustums[split]]
        name = f"/cameras/{split}/{index:04d}"
        return names.index(name) if name in names else None

    def _step_camera(self, client, step: int) -> None:
        n = len(self.frames["test"])
        if client is None or n == 0:
            return
        split, index = self.chosen.get(client.client_id, ("test", -1 if step > 0 else 0))
        if split != "test":
            index = -1 if step > 0 else 0
        self.go_to(client, "test", (index + step) % n)

    def go_to(self, client, split: str, index: int) -> None:
        """Move ``client``'s view into camera ``index`` of ``split`` and show its render | ground truth."""
        frame = self.frames[split][index]
        wxyz, position = camera_pose(frame.camera)
        with client.atomic():
            client.camera.fov = frame.camera.fov_y
            client.camera.position = position
            client.camera.wxyz = wxyz
        self.chosen[client.client_id] = (split, index)
        # hide the frustum we look through (its image would cover the view), show the previous one
        previous, k = self.inside, self._frustum_index(split, index)
        self.inside = (split, k) if k is not None else None
        if previous is not None:
            self.frustums[previous[0]][previous[1]].visible = (self.show_train if previous[0] == "train"
                                                               else self.show_test).value
        if self.inside is not None:
            self.frustums[split][k].visible = False
        name = frame.camera.name or f"{split} {index}"
        self.camera_text.content = (f"**{split} camera {index + 1} of {len(self.frames[split])}**: `{name}`  \n"
                                    f"{frame.camera.width}×{frame.camera.height} px, "
                                    f"vertical field of view {math.degrees(frame.camera.fov_y):.1f}°")
        self.worker.submit(("pair", client.client_id), lambda: self._render_pair(frame))

    @torch.no_grad()
    def _render_pair(self, frame: Frame) -> None:
        with self.lock:
            gaussians, sh_degree = self.gaussians, self.sh_degree
        if gaussians is None:
            return
        camera = frame.camera
        w, h = scaled_size(camera.width, camera.height, PAIR_PX)
        small = camera.scaled(w / camera.width) if (w, h) != (camera.width, camera.height) else camera
        image = render(gaussians, small, sh_degree=sh_degree, background=self.background, backend=self.backend).image
        gt = torch.nn.functional.interpolate(frame.image.permute(2, 0, 1)[None], size=(small.height, small.width),
                                             mode="area")[0].permute(1, 2, 0)
        self.pair.image = np.concatenate([_uint8(image), _uint8(gt)], axis=1)
        self.pair.visible = True

    # -- trsplat's renderer -----------------------------------------------------------------------
    def _apply_renderer(self) -> None:
        self._send_splats()
        for client in self.server.get_clients().values():
            self._apply_renderer_to(client)

    def _apply_renderer_to(self, client) -> None:
        if self.renderer.value == "trsplat":
            self._camera_moved(client)
        elif self.background != (1.0, 1.0, 1.0):  # the page's own background is white
            client.scene.set_background_image(np.full((2, 2, 3), np.asarray(self.background) * 255, np.uint8))
        else:  # back from trsplat's images
            client.scene.set_background_image(None)

    def _rerender_all(self) -> None:
        if self.renderer.value == "trsplat":
            for client in self.server.get_clients().values():
                self._camera_moved(client)

    def _camera_moved(self, client) -> None:
        if self.renderer.value == "trsplat":
            self.worker.submit(("view", client.client_id), lambda: self._render_view(client))

    @torch.no_grad()
    def _render_view(self, client) -> None:
        with self.lock:
            gaussians, sh_degree = self.gaussians, self.sh_degree
        cam = client.camera
        if gaussians is None or self.renderer.value != "trsplat" or cam.image_width <= 0:
            return
        width, height = scaled_size(cam.image_width, cam.image_height, int(self.resolution.value))
        camera = camera_from_pose(cam.wxyz, cam.position, cam.fov, width, height)
        image = render(gaussians, camera, sh_degree=sh_degree, background=self.background, backend=self.backend).image
        if self.renderer.value == "trsplat":  # not switched back to the browser's splats meanwhile
            client.scene.set_background_image(_uint8(image), format="jpeg", jpeg_quality=90)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        self.worker.stop()
        with contextlib.redirect_stdout(io.StringIO()):  # viser says "Server stopped"
            self.server.stop()
