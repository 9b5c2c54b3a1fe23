"""fleetlab: autonomous research on a fleet of machines.

A strategy proposes changes to a research project's editable files; the scheduler keeps every worker of a fleet busy
with those experiments, each in its own snapshot; results land in a store; analysis decides what to keep.
Heavy modules are imported lazily so `fleetlab --help` stays fast.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
