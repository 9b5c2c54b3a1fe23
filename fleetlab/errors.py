"""One exception root for fleetlab. A user sees `str(error)`: one clear sentence, never a traceback."""

from __future__ import annotations


class FleetlabError(Exception):
    """Root of every error fleetlab raises on purpose. The message is one sentence meant for the user."""


class ConfigError(FleetlabError):
    """fleetlab.toml (or a command-line option) is malformed; `key` names the offending setting."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class UnknownName(FleetlabError):
    """An unknown fleet, strategy, template or surface name; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        super().__init__(f"unknown {kind} {name!r}; valid {kind} names are: {', '.join(sorted(valid))}")
        self.kind, self.name, self.valid = kind, name, list(valid)


class ProposalRejected(FleetlabError):
    """A proposal cannot run: it edits a file it may not, a search text is missing, the result does not compile, ..."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


class StoreError(FleetlabError):
    """The results database refused an operation (e.g. changing a finished experiment)."""


class ExecutorError(FleetlabError):
    """A fleet could not do what was asked (start a run, reach a cluster)."""


class SetupFailed(ExecutorError):
    """A worker could not run the project's setup; it is taken out of the fleet."""

    def __init__(self, message: str, worker_id: str):
        super().__init__(message)
        self.worker_id = worker_id
