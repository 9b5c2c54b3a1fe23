"""Every executor in tests/executor_contract.py's FACTORIES through the same tests (a missing one is skipped)."""

from executor_contract import *  # noqa: F401,F403 - the fixture and the tests
