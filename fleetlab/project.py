"""ResearchProject: reads and validates fleetlab.toml.

Every setting is declared once in SCHEMA (type, default). Loading rejects unknown keys, wrong types, missing files,
an editable file that is also read-only and a bad regex, each with one sentence that names the key.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetlab.errors import ConfigError
from fleetlab.knobs import check_overrides

CONFIG_NAME = "fleetlab.toml"
STATE_DIR = ".fleetlab"

# Files never copied into an experiment's snapshot.
ALWAYS_EXCLUDED = (".git", STATE_DIR, "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", "results.tsv")

_STR, _INT, _FLOAT, _BOOL, _LIST, _TABLE = "string", "integer", "number", "boolean", "list of strings", "table"

# section -> key -> (type, default). A key of None in a section means "free-form table" (checked elsewhere).
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "project": {
        "name": (_STR, ""),
        "editable": (_LIST, ["train.py"]),
        "readonly": (_LIST, []),
        "exclude": (_LIST, []),
        "setup": (_STR, ""),
        "command": (_STR, "python train.py"),
        "time_budget_s": (_FLOAT, 300.0),
        "timeout_s": (_FLOAT, 600.0),
        "instructions": (_STR, "program.md"),
    },
    "metric": {
        "name": (_STR, "val_bpb"),
        "goal": (_STR, "minimize"),
        "pattern": (_STR, ""),
        "progress": (_STR, r"^fleetlab:\s*step=(?P<step>\d+)\s+metric=(?P<metric>\S+)\s+elapsed=(?P<elapsed>\S+)"),
        "extra": (_TABLE, {}),
    },
    "fleet": {
        "default": (_STR, "local:2"),
        "threads_per_slot": (_INT, 1),
        "prices": (_TABLE, {}),
        "tiers": (_TABLE, {}),
        "sky": (_TABLE, {}),
        "ray": (_TABLE, {}),
    },
    "strategy": {
        "name": (_STR, "auto"),
        "lookahead": (_INT, 1),
        "seed": (_INT, 0),
    },
    "validity": {
        "baseline_replicates": (_INT, 3),
        "k_sigma": (_FLOAT, 1.0),
        "replicates": (_INT, 3),
        "alpha": (_FLOAT, 0.05),
        "min_effect": (_FLOAT, 0.0),
        "default_sigma": (_FLOAT, 0.0),
        "extend_rounds": (_INT, 3),
        "extend_p": (_FLOAT, 0.4),
        "control_every": (_INT, 10),
    },
    "prune": {
        "enabled": (_BOOL, True),
        "min_fraction": (_FLOAT, 0.2),
        "max_fraction": (_FLOAT, 0.9),
        "min_history": (_INT, 5),
        "slack": (_FLOAT, 0.5),
        "margin": (_FLOAT, 0.0),
        "quantile": (_FLOAT, 0.95),
        "screen": (_BOOL, True),
        "recent": (_INT, 30),
        "fresh": (_FLOAT, 2.0),
    },
    "stop": {
        "max_experiments": (_INT, 0),
        "max_hours": (_FLOAT, 0.0),
        "max_gpu_hours": (_FLOAT, 0.0),
        "max_cost": (_FLOAT, 0.0),
        "target": (_FLOAT, float("nan")),
        "min_gain_per_gpu_hour": (_FLOAT, 0.0),
    },
    "llm": {
        "provider": (_STR, "anthropic"),
        "model": (_STR, ""),
        "base_url": (_STR, ""),
        "api_key_env": (_STR, ""),
        "max_cost": (_FLOAT, 10.0),
        "temperature": (_FLOAT, 0.7),
        "timeout_s": (_FLOAT, 120.0),
        "agents": (_INT, 1),
        "proposals_per_call": (_INT, 4),
        "price_in_per_mtok": (_FLOAT, 3.0),
        "price_out_per_mtok": (_FLOAT, 15.0),
    },
    "sandbox": {  # how local runs and setup are contained (fleetlab.fleet.sandbox)
        "mode": (_STR, "auto"),
        "network": (_BOOL, True),
    },
    "knobs": {},  # free-form: checked by fleetlab.knobs.check_overrides (the one list of knob keys)
}

@dataclass(frozen=True)
class Project:
    """A research project on disk, with its validated settings."""

    root: Path
    editable: tuple[str, ...]
    readonly: tuple[str, ...]
    exclude: tuple[str, ...]
    setup: str
    command: str
    time_budget_s: float
    timeout_s: float
    instructions: str
    metric: str
    goal: str
    metric_pattern: re.Pattern
    progress_pattern: re.Pattern | None
    extra_patterns: dict[str, re.Pattern]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # every section, defaults filled in
    knob_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def db_path(self) -> Path:
        return self.state_dir / "fleetlab.db"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    def section(self, name: str) -> dict[str, Any]:
        return self.settings[name]

    @property
    def knob_file(self) -> str:
        """The editable file whose UPPERCASE constants are the knobs (the first .py editable file)."""
        for f in self.editable:
            if f.endswith(".py"):
                return f
        return self.editable[0]

    def read_editable(self) -> dict[str, str]:
        return {f: (self.root / f).read_text() for f in self.editable}

    def is_excluded(self, rel: str) -> bool:
        parts = Path(rel).parts
        if any(p in ALWAYS_EXCLUDED for p in parts):
            return True
        return any(fnmatch.fnmatch(rel, pat) for pat in self.exclude)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Project":
        root = Path(root).resolve()
        path = root / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"no {CONFIG_NAME} in {root}; run `fleetlab init` or `fleetlab init --adopt` first")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        return cls.from_dict(root, raw)

    @classmethod
    def from_dict(cls, root: Path, raw: dict[str, Any]) -> "Project":
        settings = _validate(raw)
        p, m = settings["project"], settings["metric"]
        root = Path(root)
        for key in ("editable", "readonly"):
            for rel in p[key]:
                _check_relative(rel, f"project.{key}")
                if Path(rel).parts[0] in (CONFIG_NAME, STATE_DIR, ".git"):
                    raise ConfigError(f"project.{key} lists {rel!r}, which is fleetlab's or git's own; list the "
                                      "project's files only (a run must not read or change how it is measured)",
                                      key=f"project.{key}")
                if not (root / rel).is_file():
                    raise ConfigError(f"project.{key} names {rel!r}, which does not exist in {root}", key=f"project.{key}")
        if not p["editable"]:
            raise ConfigError("project.editable must name at least one file", key="project.editable")
        both = sorted(set(p["editable"]) & set(p["readonly"]))
        if both:
            raise ConfigError(f"{both[0]!r} is listed both as editable and as read-only", key="project.readonly")
        _check_ranges(settings)
        if p["timeout_s"] <= p["time_budget_s"]:
            raise ConfigError(f"project.timeout_s ({p['timeout_s']:g} s) must be above project.time_budget_s "
                              f"({p['time_budget_s']:g} s), or every run times out", key="project.timeout_s")
        if not p["command"].strip():
            raise ConfigError("project.command is empty", key="project.command")
        if m["goal"] not in ("minimize", "maximize"):
            raise ConfigError(f"metric.goal must be 'minimize' or 'maximize', not {m['goal']!r}", key="metric.goal")
        if not m["name"]:
            raise ConfigError("metric.name is empty", key="metric.name")
        v = settings["validity"]
        for key in ("alpha", "extend_p"):
            if not 0.0 < v[key] < 1.0:
                raise ConfigError(f"validity.{key} must be between 0 and 1, not {v[key]!r}", key=f"validity.{key}")
        pattern = m["pattern"] or rf"^{re.escape(m['name'])}:\s*(\S+)"
        metric_re = _regex(pattern, "metric.pattern")
        if metric_re.groups < 1:
            raise ConfigError("metric.pattern needs one capture group for the value", key="metric.pattern")
        progress_re = _regex(m["progress"], "metric.progress") if m["progress"] else None
        extras = {}
        for name, pat in m["extra"].items():
            if not isinstance(pat, str):
                raise ConfigError(f"metric.extra.{name} must be a regex string", key=f"metric.extra.{name}")
            extras[name] = _regex(pat, f"metric.extra.{name}")
            if extras[name].groups < 1:
                raise ConfigError(f"metric.extra.{name} needs one capture group", key=f"metric.extra.{name}")
        if settings["sandbox"]["mode"] not in ("auto", "bwrap", "none"):
            raise ConfigError(f"sandbox.mode must be \"auto\", \"bwrap\" or \"none\", not "
                              f"{settings['sandbox']['mode']!r}", key="sandbox.mode")
        knobs, constraints = check_overrides(raw.get("knobs", {}))
        return cls(root=root, editable=tuple(p["editable"]), readonly=tuple(p["readonly"]), exclude=tuple(p["exclude"]),
                   setup=p["setup"], command=p["command"], time_budget_s=float(p["time_budget_s"]),
                   timeout_s=float(p["timeout_s"]), instructions=p["instructions"], metric=m["name"], goal=m["goal"],
                   metric_pattern=metric_re, progress_pattern=progress_re, extra_patterns=extras, settings=settings,
                   knob_overrides=knobs, constraints=tuple(constraints))


    def check_git(self) -> None:
        """Refuse a run on a project that is not a git repository, or whose own files (editable and read-only) differ
        from HEAD: keeps are commits on `fleetlab/<tag>` branched from HEAD, so the baseline must be what HEAD holds."""
        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)

        if shutil.which("git") is None:
            raise ConfigError("git is not installed; fleetlab needs it to keep improvements as commits", key="git")
        if git("rev-parse", "--git-dir").returncode != 0:
            raise ConfigError(f"{self.root} is not a git repository; run `git init && git add -A && git commit -m "
                              "baseline` there first (kept variants become commits)", key="git")
        files = [*self.editable, *self.readonly]
        if git("rev-parse", "--verify", "-q", "HEAD").returncode != 0:
            dirty = files
        else:
            changed = git("diff", "--name-only", "--relative", "HEAD", "--", *files).stdout.split("\n")
            untracked = git("ls-files", "--others", "--", *files).stdout.split("\n")
            dirty = sorted({f for f in changed + untracked if f})
        if dirty:
            raise ConfigError(f"{', '.join(dirty)} {'has' if len(dirty) == 1 else 'have'} changes not committed to "
                              "git; commit them first (the baseline is what HEAD holds)", key="git")


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest directory at or above `start` holding fleetlab.toml (or `start` itself if none does)."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).is_file():
            return d
    return here


def _type_ok(kind: str, value: Any) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _TABLE:
        return isinstance(value, dict)
    return False


def _validate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"unknown section [{section}] in {CONFIG_NAME}; known sections are: "
                              f"{', '.join(SCHEMA)}", key=section)
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section} must be a table ([{section}])", key=section)
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if section == "knobs":
            out[section] = dict(given)
            continue
        values = {}
        for key, val in given.items():
            if key not in keys:
                raise ConfigError(f"unknown key {section}.{key} in {CONFIG_NAME}; known keys of [{section}] are: "
                                  f"{', '.join(keys)}", key=f"{section}.{key}")
            kind = keys[key][0]
            if not _type_ok(kind, val):
                raise ConfigError(f"{section}.{key} must be a {kind}, not {type(val).__name__} {val!r}",
                                  key=f"{section}.{key}")
            values[key] = val
        for key, (kind, default) in keys.items():
            values.setdefault(key, default)
        out[section] = values
    return out


# (section, key) -> (lowest, highest, whether the lowest itself is allowed); None: no bound
_RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("project", "time_budget_s"): (0, None, False),
    ("project", "timeout_s"): (0, None, False),
    ("fleet", "threads_per_slot"): (1, None, True),
    ("strategy", "lookahead"): (0, None, True),
    ("validity", "baseline_replicates"): (0, None, True),
    ("validity", "replicates"): (1, None, True),
    ("validity", "k_sigma"): (0, None, True),
    ("validity", "min_effect"): (0, None, True),
    ("validity", "default_sigma"): (0, None, True),
    ("validity", "extend_rounds"): (0, None, True),
    ("prune", "min_fraction"): (0, 1, True),
    ("prune", "max_fraction"): (0, 1, True),
    ("prune", "min_history"): (1, None, True),
    ("prune", "slack"): (0, None, True),
    ("prune", "fresh"): (0, None, True),
    ("prune", "quantile"): (0, 1, False),
    ("stop", "max_experiments"): (0, None, True),
    ("stop", "max_hours"): (0, None, True),
    ("stop", "max_gpu_hours"): (0, None, True),
    ("stop", "max_cost"): (0, None, True),
    ("stop", "min_gain_per_gpu_hour"): (0, None, True),
    ("llm", "max_cost"): (0, None, True),
    ("llm", "temperature"): (0, None, True),
    ("llm", "timeout_s"): (0, None, False),
    ("llm", "agents"): (1, None, True),
    ("llm", "proposals_per_call"): (1, None, True),
    ("llm", "price_in_per_mtok"): (0, None, True),
    ("llm", "price_out_per_mtok"): (0, None, True),
}


def _check_ranges(settings: dict[str, dict[str, Any]]) -> None:
    """Every number finite (stop.target may stay unset, nan) and inside its range, named by its key."""
    for section, keys in SCHEMA.items():
        for key, (kind, _) in keys.items():
            value = settings[section].get(key)
            if kind != _FLOAT or value is None or math.isfinite(value):
                continue
            if (section, key) == ("stop", "target") and math.isnan(value):
                continue
            raise ConfigError(f"{section}.{key} must be a finite number, not {value!r}", key=f"{section}.{key}")
    for (section, key), (low, high, closed) in _RANGES.items():
        value = settings[section][key]
        if low is not None and (value < low or (value == low and not closed)):
            need = f"{low:g} or more" if closed else ("positive" if low == 0 else f"above {low:g}")
            if high is not None:
                need = f"between {low:g} and {high:g}"
            raise ConfigError(f"{section}.{key} must be {need}, not {value!r}", key=f"{section}.{key}")
        if high is not None and value > high:
            raise ConfigError(f"{section}.{key} must be between {low:g} and {high:g}, not {value!r}",
                              key=f"{section}.{key}")


def _regex(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ConfigError(f"{key} is not a valid regular expression: {e}", key=key) from None


def _check_relative(rel: str, key: str) -> None:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel.strip() == "":
        raise ConfigError(f"{key} entry {rel!r} must be a path inside the project", key=key)
