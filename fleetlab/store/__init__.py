"""Stores: where experiments, decisions, notes and file contents live. SQLite is the embedded default."""

from fleetlab.store._base import Store
from fleetlab.store.sqlite import SQLiteStore

__all__ = ["Store", "SQLiteStore"]
