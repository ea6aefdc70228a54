"""The console's screens: one module per screen, each with ``ROUTES`` and ``NAV``.

Modules are found here by name, so a new screen is a new module and its templates, with no
list elsewhere to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from loyalty.console.web import NavEntry


def _load() -> tuple[list[Any], list[NavEntry]]:
    routes: list[Any] = []
    nav: list[NavEntry] = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        routes.extend(getattr(module, "ROUTES", ()))
        nav.extend(getattr(module, "NAV", ()))
    nav.sort(key=lambda e: (e.order, e.label))
    return routes, nav


ROUTES, NAV = _load()
