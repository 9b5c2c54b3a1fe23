"""Turn a finished run's output into a result: the run output contract.

A run prints `key: value` lines; the metric pattern picks the result and the last occurrence wins. Exit code != 0,
a timeout, no metric, a NaN metric and a tampered read-only file each end in their own final state.
"""

from __future__ import annotations

import math
import re

from fleetlab.experiment import State
from fleetlab.project import Project

LOG_TAIL_LINES = 40


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _last(pattern: re.Pattern, text: str) -> str | None:
    last = None
    for m in pattern.finditer(text):
        last = m.group(1)
    return last


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return math.nan


DATA_LINE = re.compile(r"^fleetlab: data=(\S+)", re.M)
# keys every run may print and every surface reads (training share, data repeats, throughput) without configuration
STANDARD_KEYS = ("training_seconds", "epochs", "num_steps", "steps")
STANDARD_PATTERNS = {k: re.compile(rf"^{k}:\s*([-+0-9.eE]+)\s*$", re.M) for k in STANDARD_KEYS}


def parse_output(project: Project, text: str) -> tuple[float | None, dict[str, float | str]]:
    """The metric (None if never printed; NaN if printed but not a finite number) and the extra metrics: the
    project's [metric.extra] patterns, the standard keys (training_seconds, epochs, num_steps, steps), and a
    `fleetlab: data=<fingerprint>` line (the data and tokenizer the run measured on) in extras["data"]."""
    metric = _number(_last(project.metric_pattern, text))
    extras: dict[str, float | str] = {}
    data = _last(DATA_LINE, text)
    if data is not None:
        extras["data"] = data
    for name, pat in {**STANDARD_PATTERNS, **project.extra_patterns}.items():
        raw = _last(pat, text)
        if raw is not None:
            try:
                extras[name] = float(raw)
            except ValueError:
                extras[name] = raw
    return metric, extras


def classify(project: Project, text: str, exit_code: int | None, timed_out: bool,
             tampered: list[str] | None = None) -> tuple[State, float | None, dict, str]:
    """The final state of a run, its metric (finite or None), extras and a one-line reason."""
    metric, extras = parse_output(project, text)
    if tampered:
        return State.TAMPERED, None, extras, f"the run changed read-only file(s): {', '.join(tampered)}"
    if timed_out:
        return State.TIMEOUT, None, extras, f"killed after the {project.timeout_s:g} s timeout"
    if exit_code is None or exit_code != 0:
        return State.CRASH, None, extras, f"exited with code {exit_code}"
    if metric is None:
        return State.NO_METRIC, None, extras, f"exited 0 but never printed {project.metric}"
    if math.isnan(metric) or math.isinf(metric):
        return State.NAN, None, extras, f"{project.metric} is {metric}"
    return State.DONE, metric, extras, ""


def parse_progress(project: Project, line: str) -> tuple[int, float, float] | None:
    """(step, metric, elapsed) from a progress line, or None."""
    if project.progress_pattern is None:
        return None
    m = project.progress_pattern.search(line)
    if not m:
        return None
    try:
        gd = m.groupdict()
        step = int(float(gd.get("step") or 0))
        metric = float(gd["metric"])
        elapsed = float(gd.get("elapsed") or 0.0)
    except (KeyError, ValueError, TypeError):
        return None
    if math.isnan(metric) or math.isinf(metric):
        return None
    return step, metric, elapsed
