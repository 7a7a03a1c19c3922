"""``python -m trsplat``: the ``trsplat`` command (what ``torchrun -m trsplat train ...`` runs)."""

import sys

from trsplat.command import main

sys.exit(main())
