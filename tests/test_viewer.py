"""The browser viewer, used as a person would: ``trsplat view`` on a small trained run and
``trsplat train --viewer`` are opened in headless Chromium (Debian's chromium and chromium-driver,
driven by selenium); the screenshots must show the splats, and looking through a test camera must
show what trsplat renders from that camera. Also: the conversions behind the page, and the
one-line errors (port in use, missing run folder, a PLY that is not a 3DGS PLY).

``TRSPLAT_VIEWER_SCREENSHOTS=DIR`` keeps the screenshots in DIR (docs/images/viewer_page.png is one).
"""

from __future__ import annotations

import io
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trsplat.camera import Camera, look_at
from trsplat.cli import main
from trsplat.config import TrainConfig
from trsplat.gaussians import Gaussians, load_ply, save_ply
from trsplat.render import render
from trsplat.synthetic import ground_truth_gaussians, make_synthetic_scene
from trsplat.training import RunDir, train

viser = pytest.importorskip("viser", reason="viser is not installed (pip install -e .)")

from trsplat.viewer.splats import camera_from_pose, camera_pose, rotation_to_wxyz, splat_arrays  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1400, 700)
CODE = "import sys; from trsplat.cli import main; sys.exit(main(sys.argv[1:]))"


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return ("no headless browser: Debian's chromium and chromium-driver are not installed "
                "(.ci/run installs them: apt-get install chromium chromium-driver)")
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


# -- the conversions behind the page ------------------------------------------------------------
def test_camera_pose_round_trip() -> None:
    w2c = look_at(torch.tensor([3.0, -1.0, 2.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    camera = Camera(80, 60, 70.0, 70.0, 40.0, 30.0, w2c)
    wxyz, position = camera_pose(camera)
    np.testing.assert_allclose(position, [3.0, -1.0, 2.0], atol=1e-5)
    assert abs(np.linalg.norm(wxyz) - 1) < 1e-9
    back = camera_from_pose(wxyz, position, camera.fov_y, 80, 60)
    np.testing.assert_allclose(back.world_to_camera.numpy(), w2c.numpy(), atol=1e-5)
    assert back.fy == pytest.approx(70.0)
    # viser's own quaternion of the same rotation (up to sign)
    ours = rotation_to_wxyz(w2c[:3, :3].double().numpy().T)
    theirs = viser.transforms.SO3.from_matrix(w2c[:3, :3].double().numpy().T).wxyz
    assert min(np.abs(ours - theirs).max(), np.abs(ours + theirs).max()) < 1e-7


def test_splat_arrays() -> None:
    g = ground_truth_gaussians()
    g.opacity_logits[:5] = -10.0  # below 1/255: never drawn
    arrays = splat_arrays(g)
    assert len(arrays) == len(g) - 5 and arrays.total == len(g)
    keep = torch.arange(5, len(g))
    np.testing.assert_allclose(arrays.centers * arrays.unit, g.means[keep].numpy(), rtol=1e-6, atol=1e-7)
    # covariance = R S^2 R^T, in units of unit^2: its eigenvalues are the squared scales
    eig = np.sort(np.linalg.eigvalsh(arrays.covariances[:50].astype(np.float64)), axis=1) * arrays.unit ** 2
    want = np.sort(g.scales[keep][:50].double().numpy() ** 2, axis=1)
    np.testing.assert_allclose(eig, want, rtol=1e-4)
    np.testing.assert_allclose(arrays.rgbs, (0.5 + 0.28209479177387814 * g.sh_dc[keep, 0]).clamp(0, 1).numpy(),
                               atol=1e-6)
    small = splat_arrays(g, max_splats=100)  # the 100 largest opacity x geometric-mean variance
    score = g.opacities * torch.exp(g.log_scales.sum(-1) * 2 / 3)
    want = {tuple(p) for p in np.round(g.means[torch.topk(score, 100).indices].numpy(), 4)}
    assert {tuple(p) for p in np.round(small.centers * small.unit, 4)} == want


# -- one-line errors ------------------------------------------------------------------------------
def _one_line_error(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("trsplat: error:") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def test_view_errors_are_one_line(tmp_path, capsys) -> None:
    _one_line_error(capsys, main(["view", str(tmp_path / "nothing")]), "no such run folder or PLY file")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, main(["view", str(tmp_path / "empty")]), "not a trsplat run folder")
    from plyfile import PlyData, PlyElement

    points = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(points, "vertex")]).write(str(tmp_path / "points.ply"))
    _one_line_error(capsys, main(["view", str(tmp_path / "points.ply")]), "not a 3DGS PLY")
    (tmp_path / "text.ply").write_text("hello\n")
    _one_line_error(capsys, main(["view", str(tmp_path / "text.ply")]), "text.ply")
    save_ply(ground_truth_gaussians(), tmp_path / "gt.ply")
    _one_line_error(capsys, main(["view", str(tmp_path / "gt.ply"), "--port", "70000"]), "--port 70000")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _one_line_error(capsys, main(["view", str(tmp_path / "gt.ply"), "--port", str(port)]), f"--port {port}")
        _one_line_error(capsys, main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--viewer",
                                      "--port", str(port)]), f"--port {port}")
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written


def _damaged_run(run: Path, folder: Path, how: str) -> Path:
    """A copy of ``run`` with one thing wrong."""
    shutil.copytree(run, folder)
    checkpoint = folder / RunDir.CHECKPOINT
    if how == "corrupt checkpoint":
        checkpoint.write_bytes(b"\x00garbage")
    elif how == "checkpoint without parameters":
        torch.save({"iteration": 150}, checkpoint)
    elif how == "missing config":
        (folder / RunDir.CONFIG).unlink()
    elif how == "corrupt config":
        (folder / RunDir.CONFIG).write_text("{not json")
    return folder


@pytest.mark.parametrize("how, words", [
    ("corrupt checkpoint", ["checkpoint.pt", "cannot read"]), ("checkpoint without parameters", ["checkpoint.pt"]),
    ("missing config", ["config.json"]), ("corrupt config", ["config.json"]),
])
def test_view_damaged_run_folders_are_one_line(run, tmp_path, capsys, how, words) -> None:
    damaged = _damaged_run(run, tmp_path / "run", how)
    _one_line_error(capsys, main(["view", str(damaged), "--port", "0"]), *words)


def test_view_damaged_plys_are_one_line(tmp_path, capsys) -> None:
    good = tmp_path / "gt.ply"
    save_ply(ground_truth_gaussians(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.ply").write_bytes(data[: len(data) // 2])
    _one_line_error(capsys, main(["view", str(tmp_path / "truncated.ply"), "--port", "0"]), "truncated.ply")
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    empty = np.zeros(0, dtype=[(name, "f4") for name in names])  # every 3DGS attribute, no Gaussian
    PlyData([PlyElement.describe(empty, "vertex")]).write(str(tmp_path / "none.ply"))
    _one_line_error(capsys, main(["view", str(tmp_path / "none.ply"), "--port", "0"]), "none.ply", "no Gaussians")


def test_view_errors_in_a_real_process(tmp_path) -> None:
    """As a person runs it: exit status 2, one ``trsplat: error:`` line on stderr, nothing else
    (no traceback, no banner of viser's)."""
    ply = tmp_path / "gt.ply"
    save_ply(ground_truth_gaussians(), ply)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv, word in ((["view", str(tmp_path / "nothing")], "nothing"),
                           (["view", str(tmp_path / "gt.ply"), "--port", str(port)], f"--port {port}")):
            done = subprocess.run([sys.executable, "-c", CODE, *argv], capture_output=True, text=True, timeout=300)
            assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout, done.stderr)
            assert done.stderr.startswith("trsplat: error:") and done.stderr.count("\n") == 1, done.stderr
            assert word in done.stderr, done.stderr


# -- the page in Chromium -------------------------------------------------------------------------
class Browser:
    """Headless Chromium through selenium and Debian's chromedriver (software WebGL)."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", "--disable-dev-shm-usage"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def shot(self) -> np.ndarray:
        """The page as (H, W, 3) floats in [0, 1]."""
        png = self.driver.get_screenshot_as_png()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def click(self, label: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, f"//button[contains(., '{label}')]").click()

    def checkbox(self, label: str) -> None:
        from selenium.webdriver.common.by import By

        target = self.driver.find_element(By.XPATH, f"//label[normalize-space()='{label}']").get_attribute("for")
        self.driver.find_element(By.ID, target).click()

    def choose(self, label: str, option: str) -> None:
        from selenium.webdriver.common.by import By

        target = self.driver.find_element(By.XPATH, f"//label[normalize-space()='{label}']").get_attribute("for")
        self.driver.find_element(By.ID, target).click()
        self.driver.find_element(By.XPATH, f"//*[@role='option' and normalize-space()='{option}']").click()

    def dismiss_notices(self) -> None:
        """Close viser's notices (here: "Software WebGL rendering detected"), which cover the view."""
        from selenium.webdriver.common.by import By

        for button in self.driver.find_elements(By.CSS_SELECTOR, ".mantine-Notification-closeButton"):
            button.click()

    def click_view_centre(self) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        canvas = max(self.driver.find_elements(By.TAG_NAME, "canvas"),
                     key=lambda c: c.size["width"] * c.size["height"])
        ActionChains(self.driver).move_to_element(canvas).click().perform()

    def canvas_box(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the 3D view."""
        boxes = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('canvas')).map(c => {"
            "const r = c.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })")
        return tuple(int(round(v)) for v in max(boxes, key=lambda b: b[2] * b[3]))

    def camera_crop(self, image: np.ndarray, aspect: float) -> np.ndarray:
        """What a camera of this aspect ratio sees when the page looks through it: the view's
        vertical field of view is the camera's, so its image is the centred crop of full height."""
        x, y, w, h = self.canvas_box()
        width = int(round(h * aspect))
        left = x + (w - width) // 2
        return image[y:y + h, left:left + width]

    def quit(self) -> None:
        self.driver.quit()


def _wait(predicate, timeout: float, what: str, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value is not None and value is not False:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _settled(browser: Browser, timeout: float = 60.0) -> np.ndarray:
    """A screenshot once two in a row agree (the page has drawn what it was sent)."""
    previous = browser.shot()

    def same():
        nonlocal previous
        time.sleep(1.0)
        now = browser.shot()
        done = now.shape == previous.shape and float(np.abs(now - previous).mean()) < 1e-3
        previous = now
        return done

    _wait(same, timeout, "the page to stop changing", every=0.0)
    return previous


def _drawn(image: np.ndarray) -> float:
    """Share of pixels that are clearly not the white page."""
    return float(((1.0 - image.min(axis=2)) > 0.15).mean())


def _hues(image: np.ndarray) -> int:
    """How many of 8 hue bins the saturated pixels cover (the toy scene is a rainbow torus
    around a blue and white sphere; text, grey frustums and an error page have none or one)."""
    hsv = np.asarray(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("HSV"))
    saturated = (hsv[..., 1] > 80) & (hsv[..., 2] > 60)
    counts = np.bincount(hsv[..., 0][saturated] // 32, minlength=8)
    return int((counts > 0.002 * saturated.size).sum())


def _splats_on(browser: "Browser") -> np.ndarray | None:
    """A screenshot if the middle of the 3D view shows the scene's colours, else None."""
    shot = browser.shot()
    middle = browser.camera_crop(shot, 1.0)
    return shot if _hues(middle) >= 4 else None


def _frustums_on(browser: "Browser") -> bool:
    """Whether the test cameras' orange frustum lines are on the page."""
    shot = browser.camera_crop(browser.shot(), 1.0)
    orange = (shot[..., 0] > 0.8) & (np.abs(shot[..., 1] - 0.47) < 0.12) & (shot[..., 2] < 0.25)
    return float(orange.mean()) > 0.001


def _small(image: np.ndarray, size: int) -> np.ndarray:
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _keep(image: np.ndarray, name: str) -> None:
    folder = os.environ.get("TRSPLAT_VIEWER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(Path(folder) / name)


class Command:
    """``trsplat ...`` in a subprocess, waiting for the line with the viewer's address."""

    def __init__(self, *argv: str) -> None:
        # started with SIGINT ignored, as a background job of a script starts it: Ctrl-C (SIGINT)
        # must still stop the command
        self.proc = subprocess.Popen([sys.executable, "-c", CODE, *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        self.output = ""

    def wait_for_url(self, timeout: float = 120.0) -> str:
        end = time.monotonic() + timeout
        streams = [self.proc.stdout, self.proc.stderr]
        while time.monotonic() < end:
            ready, _, _ = select.select(streams, [], [], 0.5)
            for stream in ready:
                line = stream.readline()
                self.output += line
                found = re.search(r"viewer at (http://\S+)", line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"no viewer address; output so far:\n{self.output}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.output + out + err


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=48, n_train=8, n_test=3)


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "toy"
    train(TrainConfig.make(data=str(scene), out=str(out), iters=150, eval_at=[150], n_random_init=1500,
                           lpips=False, backend="cpu", n_saved_renders=0), hooks=[])
    return out


def _render_test_view(run: Path, index: int, size: int) -> np.ndarray:
    """trsplat's render of test camera ``index`` of ``run`` at ``size`` x ``size`` (the page's truth)."""
    from trsplat.training import prepare
    from trsplat.viewer.source import load_gaussians

    view = load_gaussians(run)
    scene, _ = prepare(RunDir(run).read_config())
    camera = scene.test[index].camera
    camera = camera.scaled(size / camera.width)
    with torch.no_grad():
        out = render(view.gaussians, camera, sh_degree=view.sh_degree, background=scene.background, backend="cpu")
    return out.image.clamp(0, 1).numpy()


@needs_browser
def test_view_a_trained_run(run, tmp_path) -> None:
    start = time.monotonic()
    command = Command("view", str(run), "--port", "0")
    browser = None
    try:
        url = command.wait_for_url()
        browser = Browser()
        browser.driver.get(url)
        first = _wait(lambda: _splats_on(browser), 120, "the splats")
        opened = time.monotonic() - start
        assert "1,500 Gaussians" in browser.text()
        _wait(lambda: _frustums_on(browser), 60, "the camera frustums")
        # a page opened after the cameras were loaded looks over the shoulder of test camera 1
        # (one opened before keeps its view): reload, then clicking that frustum jumps into it
        browser.driver.refresh()
        _wait(lambda: _splats_on(browser) is not None and _frustums_on(browser), 120, "the reloaded page")
        browser.dismiss_notices()
        first = _settled(browser)
        _keep(first, "viewer_page.png")
        browser.click_view_centre()
        _wait(lambda: "test camera 1 of 3" in browser.text(), 30, "the jump to test camera 1")
        browser.checkbox("train cameras")  # the other cameras off: they would stand in the view
        browser.checkbox("test cameras")
        truth = [_render_test_view(run, k, 48) for k in range(3)]
        for k in (0, 1):
            if k == 1:  # the button: on to test camera 2
                browser.click("next test camera")
                _wait(lambda: "test camera 2 of 3" in browser.text(), 30, "the jump to test camera 2")
            inside = _settled(browser)
            _keep(inside, f"viewer_test_camera_{k + 1}.png")
            assert float(np.abs(inside - first).mean()) > 0.01  # moving to the camera changed the view
            seen = _small(browser.camera_crop(inside, 1.0), 48)
            own = _corr(seen, truth[k])
            others = max(_corr(seen, truth[j]) for j in range(3) if j != k)
            print(f"browser splats vs trsplat's render of test camera {k + 1}: correlation {own:.3f} "
                  f"(other test cameras: {others:.3f})")
            assert _drawn(seen) > 0.1 and own > 0.95 and own > others + 0.2, (own, others)
            first = inside
        # the same view drawn by trsplat's renderer and sent as an image: the same pixels
        browser.choose("renderer", "trsplat")
        drawn = _settled(browser)
        _keep(drawn, "viewer_trsplat_renderer.png")
        seen = _small(browser.camera_crop(drawn, 1.0), 48)
        difference, corr = float(np.abs(seen - truth[1]).mean()), _corr(seen, truth[1])
        print(f"trsplat renderer on the page vs trsplat's render: mean |difference| {difference:.4f}, "
              f"correlation {corr:.4f}")
        assert difference < 0.03 and corr > 0.97, (difference, corr)
    finally:
        if browser is not None:
            browser.quit()
        code, output = command.stop()
    assert code == 0 and "Traceback" not in output, output
    print(f"trsplat view: splats on the page {opened:.1f} s after the command started")


@needs_browser
def test_view_a_ply(tmp_path) -> None:
    save_ply(ground_truth_gaussians(), tmp_path / "gt.ply")
    command = Command("view", str(tmp_path / "gt.ply"), "--port", "0")
    browser = None
    try:
        browser = Browser()
        browser.driver.get(command.wait_for_url())
        shot = _wait(lambda: _splats_on(browser), 120, "the splats")
        assert "2,400 Gaussians" in browser.text() and "No cameras" in browser.text()
        assert _hues(browser.camera_crop(shot, 1.0)) >= 6  # the whole rainbow: the torus is drawn
        _keep(shot, "viewer_ply.png")
    finally:
        if browser is not None:
            browser.quit()
        code, output = command.stop()
    assert code == 0 and "Traceback" not in output, output


@needs_browser
def test_live_viewer_during_training(scene, tmp_path) -> None:
    run = tmp_path / "live"
    command = Command("train", str(scene), "--out", str(run), "--iters", "20000", "--eval-at", "20000",
                      "--n-random-init", "800", "--no-lpips", "--backend", "cpu", "--viewer", "--port", "0",
                      "--viewer-every", "0.5")
    browser = None

    def iteration() -> int:
        found = re.search(r"iteration ([\d,]+) / 20,000", browser.text())
        return int(found.group(1).replace(",", "")) if found else -1

    try:
        browser = Browser()
        browser.driver.get(command.wait_for_url(timeout=300))
        _wait(lambda: iteration() > 0, 120, "the iteration on the page")
        _wait(lambda: _drawn(browser.camera_crop(browser.shot(), 1.0)) > 0.01, 120, "the splats")
        before = iteration()
        _wait(lambda: iteration() > before, 60, "training to go on while the page is open")
        browser.click("pause training")
        _wait(lambda: "paused" in browser.text(), 30, "the paused state")
        paused_at = iteration()
        time.sleep(3.0)
        assert iteration() == paused_at  # paused: no step while the page says so
        browser.checkbox("train cameras")
        browser.checkbox("test cameras")
        outside = _settled(browser)
        browser.click("next test camera")
        _wait(lambda: "test camera 1 of 3" in browser.text(), 30, "the jump to test camera 1")
        inside = _settled(browser)
        _keep(inside, "viewer_live.png")
        assert float(np.abs(inside - outside).mean()) > 0.01 and _drawn(browser.camera_crop(inside, 1.0)) > 0.05
        browser.click("resume training")
        _wait(lambda: iteration() > paused_at, 60, "training to resume")
    finally:
        if browser is not None:
            browser.quit()
        code, output = command.stop()  # Ctrl-C: checkpoint and a one-line message
    assert code == 2 and "interrupted at iteration" in output and "Traceback" not in output, output
    assert (run / RunDir.CHECKPOINT).is_file() and (run / RunDir.CURVES).is_file()
