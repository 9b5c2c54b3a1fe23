"""Research projects that `fleetlab init` writes: each folder here is one template, copied as it is.

- `gpt`: the autoresearch workload (a small GPT, val_bpb), CPU or GPU.
- `mlp`: a NumPy MLP on scikit-learn's bundled digits (val_loss), seconds per experiment; for tests and first contact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from fleetlab.errors import FleetlabError, UnknownName

if TYPE_CHECKING:
    from importlib.abc import Traversable  # importlib.resources.abc from Python 3.11 on

__all__ = ["TEMPLATES", "write_template"]

TEMPLATES = ("gpt", "mlp")

GITIGNORE = ".fleetlab/\n__pycache__/\n"
_SKIP = {"__pycache__", "__init__.py"}
_IDENTITY = ("-c", "user.name=fleetlab", "-c", "user.email=fleetlab@localhost")


def _template_files(name: str) -> dict[str, Traversable]:
    """Relative path -> resource of every file in template `name` (sub-folders included)."""
    root = resources.files(__name__).joinpath(name)
    if not root.is_dir():
        raise FleetlabError(f"template {name!r} is not installed with this copy of fleetlab")
    files: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name in _SKIP or child.name.endswith(".pyc"):
                continue
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                files[prefix + child.name] = child

    walk(root, "")
    if not files:
        raise FleetlabError(f"template {name!r} is empty in this copy of fleetlab")
    return files


def _git(dest: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=dest, capture_output=True, text=True)


def write_template(name: str, dest: Path, force: bool = False) -> Path:
    """Write template `name` into `dest` and make it a git repository with a first commit; return `dest`.

    Every check happens before anything is written: an unknown name, a non-empty `dest` (unless `force`), a missing
    template or a missing git leave the disk untouched. With `force`, template files overwrite files of the same name and
    other files are left alone (and out of the commit).
    """
    if name not in TEMPLATES:
        raise UnknownName("template", name, TEMPLATES)
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise FleetlabError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise FleetlabError(f"{dest} is not empty; pass --force to write into it anyway")
    files = _template_files(name)
    if shutil.which("git") is None:
        raise FleetlabError("git is not installed; fleetlab needs it to version the research project")

    dest.mkdir(parents=True, exist_ok=True)
    for rel, resource in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(resource.read_bytes())
        if rel.endswith(".sh"):
            os.chmod(target, 0o755)
    gitignore = dest / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE)
    elif not all(line in gitignore.read_text().splitlines() for line in GITIGNORE.splitlines()):
        gitignore.write_text(gitignore.read_text().rstrip("\n") + "\n" + GITIGNORE)

    _commit(dest, [*files, ".gitignore"], f"fleetlab init: {name} template")
    return dest


def _commit(dest: Path, paths: list[str], message: str) -> None:
    """Commit `paths` in `dest` (creating the repository if needed), with a fallback identity when none is configured."""
    if not (dest / ".git").exists():
        proc = _git(dest, "init", "-q")
        if proc.returncode != 0:
            raise FleetlabError(f"git init failed in {dest}: {proc.stderr.strip() or proc.stdout.strip()}")
    identity: tuple[str, ...] = ()
    if not (_git(dest, "config", "user.name").stdout.strip() and _git(dest, "config", "user.email").stdout.strip()):
        identity = _IDENTITY
    add = _git(dest, "add", "--", *paths)
    if add.returncode != 0:
        raise FleetlabError(f"git add failed in {dest}: {add.stderr.strip()}")
    if _git(dest, "diff", "--cached", "--quiet").returncode == 0:
        return  # nothing changed (e.g. --force over an identical copy): no empty commit
    proc = _git(dest, *identity, "-c", "commit.gpgsign=false", "commit", "-q", "-m", message)
    if proc.returncode != 0:
        raise FleetlabError(f"git commit failed in {dest}: {proc.stderr.strip() or proc.stdout.strip()}")
