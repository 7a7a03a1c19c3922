"""Warnings about a capture: inputs trsplat uses but the user should hear about.

Errors (input that cannot be used) are :class:`~trsplat.errors.TrsplatError`; this module is for
the rest: greyscale or 16-bit images, repeated frames, a single training view, tiny downscaled
images, nerfstudio keys that are ignored. Each is one line naming a file and the problem,
issued once per capture (counted, with the first file named), as a :class:`CaptureWarning`.
docs/captures.md lists which inputs warn and which fail.
"""

from __future__ import annotations

import warnings


class CaptureWarning(UserWarning):
    """Something in a capture that trsplat accepts but that the user should know about."""


def warn(message: str) -> None:
    """Issue ``message`` as a :class:`CaptureWarning`."""
    warnings.warn(message, CaptureWarning, stacklevel=3)
