"""Kopf handlers: the thin wiring of read -> decide -> ensure -> write status.

The only package that imports kopf. `controller_modules()` imports the controllers (one
per kind, the monitoring of served ModelDeployments and their retraining), which
register their handlers
with Kopf; each module also declares the
RBAC verbs it uses in a module-level `RBAC_RULES` list (see `orchard operator --write-rbac`).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# One module per controller, in this package.
CONTROLLERS = ("trainingjob", "modelversion", "modeldeployment", "monitoring", "retraining")


def controller_modules() -> list[ModuleType]:
    """The controller modules, imported (so their handlers are registered)."""
    modules = []
    for name in CONTROLLERS:
        qualified = f"{__name__}.{name}"
        if importlib.util.find_spec(qualified) is None:
            continue  # not part of this build (yet)
        modules.append(importlib.import_module(qualified))
    return modules
