"""User-facing errors.

Anything the user can fix (a missing file, a corrupt image, an impossible option) is raised as
:class:`TrsplatError` with one line that names the file or option and the problem. The CLI prints
that line and exits with status 2 instead of showing a traceback.
"""

import sys


class TrsplatError(Exception):
    """An error caused by input or options, reported to the user as one line."""


class Terminated(TrsplatError):
    """SIGTERM outside the training loop (which has its own handler): the command stops with one
    line. Raised while another error propagates, that error is the one to report (``__context__``)."""

    def __init__(self) -> None:
        super().__init__("stopped by SIGTERM")

    def reported(self) -> TrsplatError:
        """The error to print: the one this signal interrupted, if any, else this one."""
        return self.__context__ if isinstance(self.__context__, TrsplatError) else self


def warn(message: str) -> None:
    """Tell the user about an input that works but is probably not what they meant (one line)."""
    print(f"trsplat: warning: {message}", file=sys.stderr)
