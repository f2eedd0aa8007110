"""setuptools' PEP 517 backend, asking for mypy when a wheel is compiled
(``CLIPPERLAB_COMPILE=1``: _build/mypyc_real.py) and never compiling an editable install."""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _meta
from setuptools.build_meta import *  # noqa: F401,F403  (the hooks this module passes on)

# mypyc comes with mypy (the measured build: mypy 2.4.1; the dev extra asks for >= 1.10)
MYPYC = "mypy>=1.10"


def _extra() -> list[str]:
    return [MYPYC] if os.environ.get("CLIPPERLAB_COMPILE", "") == "1" else []


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return list(_meta.get_requires_for_build_wheel(config_settings)) + _extra()


# An editable install never compiles: a compiled module shadows its ``.py``, and edits
# would not take effect.  Each editable hook runs setup.py without the variable.


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    os.environ.pop("CLIPPERLAB_COMPILE", None)
    return list(_meta.get_requires_for_build_editable(config_settings))


def prepare_metadata_for_build_editable(metadata_directory: str,
                                        config_settings: Any = None) -> str:
    os.environ.pop("CLIPPERLAB_COMPILE", None)
    return str(_meta.prepare_metadata_for_build_editable(metadata_directory, config_settings))


def build_editable(wheel_directory: str, config_settings: Any = None,
                   metadata_directory: str | None = None) -> str:
    os.environ.pop("CLIPPERLAB_COMPILE", None)
    return str(_meta.build_editable(wheel_directory, config_settings, metadata_directory))
