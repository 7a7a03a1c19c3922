"""The ``trsplat`` console command and ``python -m trsplat``: tune the process, then run the CLI.

:func:`trsplat.process_tuning.tune_process` sets environment variables that torch reads only when
it is imported, so it runs here, before :mod:`trsplat.cli` (which imports torch) is imported.
"""

from __future__ import annotations

from trsplat.process_tuning import tune_process


def main() -> int:
    tune_process()
    from trsplat.cli import main as cli_main  # imports torch

    return cli_main()
