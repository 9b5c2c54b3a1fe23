"""New lines of a log that a remote API hands back whole on every read (Ray's get_job_logs, SkyPilot's job logs)."""

from __future__ import annotations


class LogTail:
    """Turns successive whole-log reads into the complete lines that are new, and mirrors the new text into a local
    file (the run directory's run.log, which `fleetlab show --log` reads)."""

    __slots__ = ("mirror", "offset", "partial")

    def __init__(self, mirror: str | None = None):
        self.mirror = mirror
        self.offset = 0  # characters already passed on
        self.partial = ""  # an unfinished last line

    def feed(self, text: str, final: bool = False) -> list[str]:
        """The complete new lines of `text` (the whole log so far); when final, the unfinished last line too."""
        new, self.offset = text[self.offset:], max(self.offset, len(text))
        if new and self.mirror:
            try:
                with open(self.mirror, "a") as f:
                    f.write(new)
            except OSError:
                pass
        pieces = (self.partial + new).split("\n")
        self.partial = pieces.pop()
        if final and self.partial:
            pieces.append(self.partial)
            self.partial = ""
        return [p.rstrip("\r") for p in pieces]
