"""Adopt an existing karpathy/autoresearch checkout as a fleetlab project, as it is.

Only a new fleetlab.toml is written; train.py, prepare.py, program.md and everything else stay byte-for-byte the same.
Knobs are not listed: fleetlab infers them from train.py's UPPERCASE constants.
"""

from __future__ import annotations

from pathlib import Path

from fleetlab.errors import FleetlabError

__all__ = ["adopt", "REQUIRED_FILES"]

REQUIRED_FILES = ("train.py", "prepare.py", "program.md", "pyproject.toml")

# autoresearch fixes its budget in prepare.py (TIME_BUDGET = 300, read-only), so fleetlab's budget mirrors it.
ADOPTED_TOML = """\
# Written by `fleetlab init --adopt` for an existing autoresearch checkout; no other file was changed.
# autoresearch's prepare.py fixes the 5-minute budget itself (it ignores FLEETLAB_TIME_BUDGET).
[project]
editable = ["train.py"]
readonly = ["prepare.py"]
setup = "uv run prepare.py"
command = "uv run train.py"
time_budget_s = 300
timeout_s = 600

[metric]
name = "val_bpb"
goal = "minimize"
pattern = '^val_bpb:\\s*(\\S+)'

[metric.extra]
memory_mb = '^peak_vram_mb:\\s*(\\S+)'
num_steps = '^num_steps:\\s*(\\S+)'
"""


def adopt(root: Path) -> Path:
    """Write fleetlab.toml into the autoresearch checkout at `root` and return its path; changes no existing file."""
    root = Path(root)
    if not root.is_dir():
        raise FleetlabError(f"{root} is not a directory, so it cannot be adopted as an autoresearch checkout.")
    target = root / "fleetlab.toml"
    if target.exists():
        raise FleetlabError(f"{target} already exists; this directory is already a fleetlab project.")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise FleetlabError(f"{root} is not an autoresearch checkout: it lacks {', '.join(missing)}.")
    if "evaluate_bpb" not in _read(root / "prepare.py") or "val_bpb" not in _read(root / "train.py"):
        raise FleetlabError(f"{root} is not an autoresearch checkout: prepare.py must define evaluate_bpb "
                            "and train.py must print val_bpb.")
    try:
        with open(target, "x", encoding="utf-8") as f:  # "x": never overwrite, even in a race
            f.write(ADOPTED_TOML)
    except FileExistsError:
        raise FleetlabError(f"{target} already exists; this directory is already a fleetlab project.") from None
    return target


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
