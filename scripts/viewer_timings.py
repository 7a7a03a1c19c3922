"""The viewer's measurements in docs/viewer.md (needs Debian's chromium and chromium-driver).

    .venv/bin/python scripts/viewer_timings.py open  DIR     # trsplat view on a 100k-Gaussian run
    .venv/bin/python scripts/viewer_timings.py train DIR     # seconds per iteration with/without --viewer

``open`` makes (once) a run of 100,000 Gaussians on the 128-pixel synthetic scene: the ground-truth
torus and sphere resampled with 100k Gaussians, trained for one iteration, so that its density and
overlap are those of a trained scene (a random initialisation covers the whole volume instead).
Then it times ``trsplat view RUN`` from the command's start to the splats on a page in headless
Chromium (started beforehand, 1400 x 700, software WebGL on the same two cores), and counts the
page's frames per second while the view is dragged (see :func:`frames_per_second`). With
``--renderer trsplat`` the page's frames show the last image trsplat sent, so it also reports the
seconds trsplat takes to render one 256-pixel view of the run (in this process, after the page
closed): the rate at which that renderer's images follow an orbit.

``train`` trains the same short run (100k random Gaussians) three ways, interleaved and repeated
after one warm-up run:
without the viewer, with the live viewer and no page open, with the live viewer and a page open in
headless Chromium (800 x 600, on the same two cores); it reports the median wall-clock seconds per
iteration after the first 20 (compilation) iterations, in this process as ``trsplat train``
runs them (the hooks of ``trsplat train --viewer`` less the progress bar), and the longest step
(a stall of training would show there). With a page, only the steps while it is open count.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from trsplat.config import TrainConfig
from trsplat.gaussians import SH_C0, Gaussians
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import Hook, train
from trsplat.training.plots import TrainingCurves
from trsplat.viewer import LiveViewer

CHROME_ARGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader")


def dense_gaussians(n: int, seed: int = 0) -> Gaussians:
    """The synthetic scene's torus and sphere with ``n`` Gaussians (scales shrunk with sqrt(n))."""
    gen = torch.Generator().manual_seed(seed)
    n_torus = 2 * n // 3
    n_sphere = n - n_torus
    u = torch.rand(n_torus, generator=gen) * 2 * math.pi
    v = torch.rand(n_torus, generator=gen) * 2 * math.pi
    torus = torch.stack([(0.8 + 0.25 * torch.cos(v)) * torch.cos(u), (0.8 + 0.25 * torch.cos(v)) * torch.sin(u),
                         0.25 * torch.sin(v)], dim=1)
    hue = (u / (2 * math.pi)).numpy()
    torus_rgb = torch.tensor(np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hue]), dtype=torch.float32)
    d = torch.randn(n_sphere, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)
    checker = ((torch.floor(4 * torch.atan2(d[:, 1], d[:, 0]) / math.pi)
                + torch.floor(4 * torch.acos(d[:, 2].clamp(-1, 1)) / math.pi)) % 2)[:, None]
    sphere_rgb = checker * torch.tensor([0.95, 0.95, 0.9]) + (1 - checker) * torch.tensor([0.1, 0.15, 0.35])
    rgb = torch.cat([torus_rgb, sphere_rgb])
    scale = 0.045 * math.sqrt(2400 / n)
    return Gaussians(means=torch.cat([torus, 0.4 * d]),
                     log_scales=torch.log(scale * (0.7 + 0.6 * torch.rand(n, 3, generator=gen))),
                     quats=torch.randn(n, 4, generator=gen), opacity_logits=torch.full((n,), 2.5),
                     sh_dc=((rgb - 0.5) / SH_C0)[:, None, :], sh_rest=torch.zeros(n, 15, 3))


def make_run(folder: Path, n: int = 100_000, iters: int = 1, **overrides) -> Path:
    from trsplat.data.scene import load_scene
    from trsplat.training import Trainer

    scene_dir = folder / "scene"
    if not (scene_dir / "transforms_train.json").is_file():
        make_synthetic_scene(scene_dir, size=128)
    run = folder / f"run_{n}"
    if not (run / "checkpoint.pt").is_file():
        cfg = TrainConfig.make(data=str(scene_dir), out=str(run), iters=iters, eval_at=[iters], lpips=False,
                               n_saved_renders=0, **overrides)
        Trainer(cfg, load_scene(scene_dir), dense_gaussians(n), hooks=[]).run()
    return run


def chrome(width: int = 1400, height: int = 700):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (*CHROME_ARGS, f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(300)
    driver.command_executor.client_config.timeout = 900  # a slow page makes a drag take minutes
    return driver


def coloured_share(driver) -> float:
    """Share of saturated pixels in the middle of the page (0 while a frame takes over 10 s)."""
    from PIL import Image
    from selenium.common.exceptions import TimeoutException

    try:
        png = driver.get_screenshot_as_png()
    except TimeoutException:
        return 0.0
    hsv = np.asarray(Image.open(io.BytesIO(png)).convert("HSV"))
    w = hsv.shape[1]
    middle = hsv[:, w // 2 - hsv.shape[0] // 2: w // 2 + hsv.shape[0] // 2]
    return float(((middle[..., 1] > 80) & (middle[..., 2] > 60)).mean())


FRAME_COUNTER = """
const gl = WebGL2RenderingContext.prototype;
if (!window.__wrapped) {
  window.__wrapped = true;
  for (const name of ["drawArrays", "drawElements", "drawArraysInstanced", "drawElementsInstanced"]) {
    const original = gl[name];
    gl[name] = function (...args) { window.__drew = true; return original.apply(this, args); };
  }
}
window.__frames = 0; window.__drawn = 0; window.__drew = false;
(function f() { window.__frames++; if (window.__drew) { window.__drawn++; window.__drew = false; }
                requestAnimationFrame(f); })();
"""


def frames_per_second(driver, seconds: float = 6.0) -> dict[str, float]:
    """While the view is dragged (an orbit of 180 pixels over ``seconds``): the page's animation
    frames per second, and those in which WebGL drew (viser renders on demand: a frame without
    a draw call shows the previous picture)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = max(driver.find_elements(By.TAG_NAME, "canvas"), key=lambda c: c.size["width"] * c.size["height"])
    driver.execute_script(FRAME_COUNTER)
    read = "return [performance.now(), window.__frames, window.__drawn]"
    t0, f0, d0 = driver.execute_script(read)
    steps = int(seconds / 0.1)
    chain = ActionChains(driver).move_to_element(canvas).click_and_hold()
    for _ in range(steps):
        chain.move_by_offset(3, 1).pause(0.1)
    chain.release().perform()
    t1, f1, d1 = driver.execute_script(read)
    elapsed = (t1 - t0) / 1000.0
    return {"orbit_frames_per_s": round((f1 - f0) / elapsed, 1), "orbit_drawn_frames_per_s": round((d1 - d0) / elapsed, 1)}


def trsplat_render_seconds(run: Path, longest: int = 256, repeats: int = 5) -> float:
    """Median seconds of one trsplat render of ``run``'s first test view (square) at ``longest``
    pixels, on the backend ``trsplat view`` chooses (what ``--renderer trsplat`` does for each new
    view of the page)."""
    from trsplat.render import render
    from trsplat.render.backends import resolve_backend
    from trsplat.training import RunDir, prepare
    from trsplat.viewer.source import load_gaussians

    view = load_gaussians(run)
    scene, _ = prepare(RunDir(run).read_config())
    camera = scene.test[0].camera
    camera = camera.scaled(longest / max(camera.width, camera.height))
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            render(view.gaussians, camera, sh_degree=view.sh_degree, background=scene.background,
                   backend=resolve_backend("auto"))  # as trsplat view --backend auto
            times.append(time.perf_counter() - start)
    return float(statistics.median(times[1:]))  # the first one compiles


def time_open(run: Path, extra: list[str]) -> dict[str, float]:
    driver = chrome()
    start = time.monotonic()
    command = Path(sys.executable).parent / "trsplat"  # the installed command, as a person runs it
    proc = subprocess.Popen([str(command), "view", str(run), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "viewer at" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise SystemExit("trsplat view stopped")
        printed = time.monotonic() - start
        driver.get(re.search(r"(http://\S+)", line).group(1))
        while coloured_share(driver) < 0.05:
            if time.monotonic() - start > 300:
                return {"address_s": round(printed, 1), "splats_on_page_s": "not within 300 s"}
            time.sleep(0.2)
        drawn = time.monotonic() - start
        return {"address_s": round(printed, 1), "splats_on_page_s": round(drawn, 1), **frames_per_second(driver)}
    finally:
        driver.quit()
        proc.terminate()
        proc.wait()


def thread_cpu_seconds(exclude: set[int]) -> float:
    """CPU seconds of this process's Python threads other than ``exclude`` (native ids): the
    viewer's worker and viser's server (Linux: /proc/self/task/ID/stat)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for thread in threading.enumerate():
        if thread.native_id in exclude or thread.native_id is None:
            continue
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


class Stamps(Hook):
    """Per step: when it ended, whether a page was open, and (``viewer_threads``) the CPU seconds
    of the viewer's threads so far."""

    def __init__(self, live: LiveViewer | None, exclude: set[int]) -> None:
        self.live = live
        self.exclude = exclude
        self.steps: list[tuple[float, bool, float]] = []

    def on_step(self, trainer, iteration, loss, psnr) -> None:
        viewer = self.live.viewer if self.live is not None else None
        cpu = thread_cpu_seconds(self.exclude) if viewer is not None else 0.0
        self.steps.append((time.perf_counter(), viewer is not None and viewer.n_clients > 0, cpu))


class HookClock(Hook):
    """When the hooks before it finished, per step (to time the viewer's own ``on_step``)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step(self, trainer, iteration, loss, psnr) -> None:
        self.times.append(time.perf_counter())


def seconds_per_iteration(out: Path, scene: Path, viewer: bool, page: bool, iters: int,
                          n: int) -> dict[str, float]:
    """Median and longest wall-clock seconds per iteration of a training in this process, after
    the first 20 steps (compilation) and, with ``page``, only while the page is open; with the
    viewer, also its share of those steps' time: its ``on_step`` on the training thread plus the
    CPU seconds of its threads (the page's browser, a separate process, is not counted there)."""
    live = LiveViewer(port=0) if viewer else None
    exclude = {threading.main_thread().native_id}
    stamps, before = Stamps(live, exclude), HookClock()
    drivers = []

    def open_page() -> None:
        exclude.add(threading.get_native_id())
        while live.viewer is None:
            time.sleep(0.1)
        drivers.append(chrome(800, 600))
        drivers[0].get(live.viewer.url)

    if page:
        threading.Thread(target=open_page, daemon=True).start()
    cfg = TrainConfig.make(data=str(scene), out=str(out), iters=iters, eval_at=[iters], lpips=False,
                           n_random_init=n, n_saved_renders=0)
    hooks = [TrainingCurves()] + ([before, live] if live else []) + [stamps]  # the live hook between two clocks
    try:
        train(cfg, hooks=hooks)
    finally:
        for driver in drivers:
            driver.quit()
    ends = np.array([t for t, _, _ in stamps.steps])
    cpu = np.array([c for _, _, c in stamps.steps])
    keep = np.arange(21, len(ends))  # step k + 1 ran from ends[k - 1] to ends[k]
    if page:  # only the steps that began and ended with the page open
        opened = np.array([o for _, o, _ in stamps.steps], dtype=bool)
        keep = keep[opened[keep - 1] & opened[keep]]
    if len(keep) < 10:
        raise SystemExit(f"only {len(keep)} steps were measured (the page opened late?): raise --iters")
    gaps = ends[keep] - ends[keep - 1]
    result = {"median": float(np.median(gaps)), "longest": float(gaps.max())}
    if live is not None:
        hook = ends[keep] - np.array(before.times)[keep]  # the live hook's on_step (and Stamps' own read)
        threads = cpu[keep] - cpu[keep - 1]
        result["viewer_share"] = float((hook.sum() + threads.sum()) / gaps.sum())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("open", "train"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--n", type=int, default=100_000, help="Gaussians of the training runs")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.what == "open":
        run = make_run(args.folder)
        for extra in ([], ["--renderer", "trsplat"], ["--max-splats", "20000"]):
            row = {"options": " ".join(extra) or "(default)", **time_open(run, extra)}
            if "trsplat" in extra:
                row["trsplat_256px_render_s"] = round(trsplat_render_seconds(run), 2)
            print(json.dumps(row), flush=True)
    else:
        scene = args.folder / "scene"
        if not (scene / "transforms_train.json").is_file():
            make_synthetic_scene(scene, size=128)
        cases = (("no viewer", False, False), ("--viewer, no page", True, False), ("--viewer, page open", True, True))
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
        warm = args.folder / "train_warm_up"  # the first training of a process compiles more than 20 steps' worth
        shutil.rmtree(warm, ignore_errors=True)
        seconds_per_iteration(warm, scene, False, False, args.iters, args.n)
        for k in range(args.repeats):
            for name, viewer, page in cases:
                out = args.folder / f"train_{k}_{int(viewer)}{int(page)}"
                shutil.rmtree(out, ignore_errors=True)
                results[name].append(seconds_per_iteration(out, scene, viewer, page, args.iters, args.n))
                print(name, k, json.dumps({key: round(v, 4) for key, v in results[name][-1].items()}), flush=True)
        base = statistics.median(r["median"] for r in results["no viewer"])
        for name, runs in results.items():
            med = statistics.median(r["median"] for r in runs)
            row = {"case": name, "median_s_per_it": round(med, 4), "runs": [round(r["median"], 4) for r in runs],
                   "longest_step_s": round(max(r["longest"] for r in runs), 3),
                   "vs_no_viewer": f"{100 * (med / base - 1):+.1f}%"}
            if "viewer_share" in runs[0]:
                row["viewer_share_of_step_time"] = f"{100 * statistics.median(r['viewer_share'] for r in runs):.2f}%"
            print(json.dumps(row))


if __name__ == "__main__":
    main()
