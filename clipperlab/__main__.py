"""``python -m clipperlab``: the same as the ``clipperlab`` command."""

from __future__ import annotations

import sys

from clipperlab.cli import main

sys.exit(main())
