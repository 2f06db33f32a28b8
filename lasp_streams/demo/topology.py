"""Where the demo finds the ad-counter topology (``topologies/ad_counter.py``).

``topologies/`` sits next to the package in a checkout and is not installed with it; when it is
not importable the demo adds the checkout root (the parent of the package directory) to
``sys.path`` once, and otherwise says how to fix it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from lasp_streams.errors import LaspError

__all__ = ["ad_counter"]


def ad_counter() -> ModuleType:
    """The ``topologies.ad_counter`` module."""
    try:
        return importlib.import_module("topologies.ad_counter")
    except ModuleNotFoundError as exc:
        if exc.name not in ("topologies", "topologies.ad_counter"):
            raise
    root = Path(__file__).resolve().parents[2]
    if not (root / "topologies" / "ad_counter.py").is_file():
        raise LaspError(
            "the ad-counter topology (topologies/ad_counter.py) is not importable: run the demo "
            "from a checkout of lasp_streams, or put the checkout on PYTHONPATH"
        )
    sys.path.insert(0, str(root))
    return importlib.import_module("topologies.ad_counter")
