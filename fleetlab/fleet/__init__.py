"""Fleets: where experiments run. `make_executor("local:4", root)` turns a `--fleet` value into an Executor.

Each backend is imported only when asked for: Ray and SkyPilot are heavy optional dependencies, and the run wrapper
(`fleetlab.fleet._wrapper`, which imports this package first) must start fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import ...`: this module is imported on every run's start (see above)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from fleetlab.fleet._base import Executor

# scheme -> (module, factory, pip extra that brings its dependencies)
FLEETS: dict[str, tuple[str, str, str | None]] = {
    "local": ("fleetlab.fleet.local", "LocalExecutor.from_spec", None),
    "sim": ("fleetlab.fleet.sim", "SimExecutor", None),
    "ray": ("fleetlab.fleet.ray", "RayExecutor", "ray"),
    "sky": ("fleetlab.fleet.skypilot", "SkyExecutor", "sky"),
}

__all__ = ["FLEETS", "make_executor"]


def make_executor(spec: str, project_root: Path, **kw: Any) -> Executor:
    """The executor for a `--fleet` value: `local:N`, `local:gpus`, `sim:...`, `ray:URL`, `sky:...`.

    An unknown scheme raises UnknownName with the valid ones; a backend whose dependency is missing raises
    ExecutorError saying which extra to install.
    """
    import importlib

    from fleetlab.errors import ExecutorError, UnknownName

    scheme = spec.partition(":")[0].strip().lower()
    if scheme not in FLEETS:
        raise UnknownName("fleet", scheme or spec, list(FLEETS))
    module_name, factory, extra = FLEETS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ExecutorError(f"the {scheme!r} fleet is not available in this version of fleetlab") from e
        hint = f"; install it with: pip install 'fleetlab[{extra}]'" if extra else ""
        raise ExecutorError(f"the {scheme!r} fleet needs the Python package {e.name!r}{hint}") from e
    obj = module
    for attr in factory.split("."):
        obj = getattr(obj, attr)
    if scheme == "local":
        return obj(spec, project_root, **kw)
    return obj(spec, **kw)
