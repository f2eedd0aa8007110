"""``python -m clipperlab``: the same as the ``clipperlab`` command."""

from __future__ import annotations

import sys

from clipperlab.cli import main

if __name__ == "__main__":  # not when a fork server or spawn imports it as __mp_main__
    sys.exit(main())
