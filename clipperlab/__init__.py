"""clipperlab: a testbed for low-latency prediction serving (Clipper, NSDI 2017).

The folders at the repository root are installed as this package's subpackages
(setuptools ``package-dir``): ``clipperlab.engine``, ``clipperlab.simulator``,
``clipperlab.real``, ``clipperlab.calibration``, ``clipperlab.workloads``,
``clipperlab.experiments``.  This folder holds the CLI (``clipperlab.cli``), its commands
(``clipperlab.commands``) and the version.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pkgutil import extend_path

# Run from a checkout (the repository root on sys.path: ``python -m clipperlab``, pytest),
# this folder is found before the installed package and would hide its subpackages, which
# live in sibling folders; extend_path adds every ``clipperlab/`` on sys.path, so
# ``clipperlab.engine`` comes from the install (the editable link tree or the wheel).
__path__ = extend_path(__path__, __name__)

try:
    __version__ = version("clipperlab")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
    __version__ = "0+unknown"

__all__ = ["__version__"]
