"""Our optional C extensions: built by ``pip install`` where a compiler is, else absent."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_extension(name: str) -> ModuleType | None:
    """The compiled module ``name``, or None where the install could not build it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
