"""``python -m singleton``: the ``singleton`` command line (see :mod:`singleton.cli`)."""

from __future__ import annotations

import sys

from singleton.cli import main

if __name__ == "__main__":
    sys.exit(main())
