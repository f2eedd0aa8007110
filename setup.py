"""Only the optional compiled build lives here; everything else is in pyproject.toml.

``CLIPPERLAB_COMPILE=1 pip install .`` compiles the real path's hot modules with mypyc
(_build/mypyc_real.py); without it the package is pure Python.
"""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _build import mypyc_real  # noqa: E402

ext_modules = []
# pip's "requirements to build" step runs this file with egg_info before mypy is in the
# build environment (the backend then asks for it): nothing to compile at that step
if mypyc_real.wanted() and "egg_info" not in sys.argv:
    try:
        from mypyc.build import mypycify
    except ImportError as e:
        raise SystemExit("CLIPPERLAB_COMPILE=1 needs mypy (mypyc) in the build environment") from e
    # staged under build/ by relative path: mypyc names a module from its folders
    staged = mypyc_real.stage(Path("build/mypyc-src"))
    ext_modules = mypycify(mypyc_real.mypy_args(staged), opt_level="3",
                           group_name=mypyc_real.GROUP)

setup(ext_modules=ext_modules)
