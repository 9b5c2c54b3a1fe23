"""Workspaces: turn a proposal into an isolated snapshot of the project, and kept experiments into git commits.

Only files listed as editable may change. An edit naming any other path (a read-only file, `../x`, an absolute path,
a symlink that leads out of the project) is rejected before anything runs. Read-only files are hash-checked before
and after every run.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

from fleetlab.errors import FleetlabError, ProposalRejected
from fleetlab.experiment import Edit
from fleetlab.project import CONFIG_NAME, Project


def content_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()[:16]


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_editable_path(project: Project, rel: str) -> str:
    """Normalise `rel` and make sure it names an editable file inside the project; ProposalRejected otherwise."""
    if not isinstance(rel, str) or not rel.strip():
        raise ProposalRejected("an edit names no file", reason="bad_path")
    p = Path(rel)
    if p.is_absolute():
        raise ProposalRejected(f"the edit names the absolute path {rel!r}; only {', '.join(project.editable)} may "
                               "change", reason="outside")
    norm = os.path.normpath(rel)
    if norm.startswith("..") or ".." in Path(norm).parts:
        raise ProposalRejected(f"the edit names {rel!r}, which is outside the project", reason="outside")
    if norm in project.readonly:
        raise ProposalRejected(f"the edit changes {norm!r}, which is read-only", reason="readonly")
    if norm not in project.editable:
        raise ProposalRejected(f"the edit changes {norm!r}, which is not an editable file "
                               f"(editable: {', '.join(project.editable)})", reason="not_editable")
    real = (project.root / norm).resolve()
    if not real.is_relative_to(project.root.resolve()):
        raise ProposalRejected(f"{norm!r} is a symlink that leads out of the project", reason="outside")
    return norm


def apply_edits(project: Project, files: dict[str, str], edits: Iterable[Edit]) -> dict[str, str]:
    """Apply SEARCH/REPLACE or whole-file edits to a copy of `files`; every search text must occur exactly once."""
    out = dict(files)
    for edit in edits:
        name = check_editable_path(project, edit.file)
        if edit.content is not None:
            out[name] = edit.content
            continue
        if edit.search is None or edit.replace is None:
            raise ProposalRejected(f"an edit of {name} needs either content, or search and replace", reason="malformed")
        text = out[name]
        n = text.count(edit.search)
        if n == 0:
            raise ProposalRejected(f"the search text does not occur in {name}: {_short(edit.search)}",
                                   reason="search_missing")
        if n > 1:
            raise ProposalRejected(f"the search text occurs {n} times in {name} (it must occur exactly once): "
                                   f"{_short(edit.search)}", reason="search_ambiguous")
        out[name] = text.replace(edit.search, edit.replace, 1)
    return out


def check_compiles(files: dict[str, str]) -> None:
    for name, text in files.items():
        if name.endswith(".py"):
            try:
                compile(text, name, "exec")
            except SyntaxError as e:
                raise ProposalRejected(f"{name} does not compile after the edit: {e.msg} (line {e.lineno})",
                                       reason="syntax") from None


def diff_size(old: dict[str, str], new: dict[str, str]) -> tuple[int, int]:
    """Lines added and removed between two versions of the editable files."""
    added = removed = 0
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, ""), new.get(name, "")
        if a == b:
            continue
        la, lb = a.splitlines(), b.splitlines()
        if len(la) == len(lb):  # same length (e.g. knob values rewritten in place): count changed lines directly
            changed = sum(1 for x, y in zip(la, lb) if x != y)
            added, removed = added + changed, removed + changed
            continue
        for line in difflib.unified_diff(la, lb, lineterm="", n=0):
            if line.startswith("+") and not line.startswith("+++"):
                added += 1
            elif line.startswith("-") and not line.startswith("---"):
                removed += 1
    return added, removed


def unified_diff(old: dict[str, str], new: dict[str, str]) -> str:
    out = []
    for name in sorted(set(old) | set(new)):
        out.extend(difflib.unified_diff(old.get(name, "").splitlines(keepends=True),
                                        new.get(name, "").splitlines(keepends=True), f"a/{name}", f"b/{name}"))
    return "".join(out)


def project_files(project: Project, root: Path | None = None) -> list[str]:
    """Relative paths of every file a snapshot carries (everything but state, VCS and excluded files)."""
    root = root or project.root
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if not project.is_excluded(os.path.normpath(os.path.join(rel_dir, d))))
        for f in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if not project.is_excluded(rel):
                out.append(rel)
    return out


def files_from_dir(project: Project, src: Path) -> dict[str, str]:
    """Read a hand-made variant (a copy of the project) and make sure only editable files differ."""
    src = Path(src).resolve()
    if not src.is_dir():
        raise FleetlabError(f"{src} is not a directory")
    files = {}
    for rel in project.editable:
        p = src / rel
        if not p.is_file():
            raise ProposalRejected(f"{src} has no {rel}", reason="missing")
        files[rel] = p.read_text()
    original = set(project_files(project))
    for rel in project_files(project, src):
        if rel in project.editable:
            continue
        mine = src / rel
        theirs = project.root / rel
        if rel not in original:
            raise ProposalRejected(f"{src} adds {rel!r}, which is not an editable file", reason="not_editable")
        if mine.is_symlink() or file_hash(mine) != file_hash(theirs):
            what = "read-only" if rel in project.readonly else "not editable"
            raise ProposalRejected(f"{src} changes {rel!r}, which is {what}", reason="readonly")
    return files


def readonly_hashes(project: Project, root: Path) -> dict[str, str]:
    return {rel: (file_hash(root / rel) if (root / rel).is_file() else "missing") for rel in project.readonly}


def own_files(project: Project) -> list[str]:
    """The project's own files that decide what a run measures: the editable and read-only files and fleetlab.toml."""
    return sorted({*project.editable, *project.readonly, CONFIG_NAME})


def own_hashes(project: Project) -> dict[str, str]:
    """Hashes of the project's own files, taken at session start (`changed_own_file` compares with them)."""
    return {rel: (file_hash(project.root / rel) if (project.root / rel).is_file() else "missing")
            for rel in own_files(project)}


def changed_own_file(project: Project, before: dict[str, str]) -> str | None:
    """The first of the project's own files whose content is no longer what it was at session start, else None.

    Snapshots copy these files: one changed out of band (by a run that got out, another process, a hand) would make
    later runs measure something else than the earlier ones they are compared with."""
    for rel, digest in sorted(before.items()):
        path = project.root / rel
        try:
            now = file_hash(path) if path.is_file() else "missing"
        except OSError:
            now = "unreadable"
        if now != digest:
            return rel
    return None


def make_snapshot(project: Project, dest: Path, files: dict[str, str]) -> dict[str, str]:
    """Write the project, with `files` as its editable files, into dest. Returns the read-only files' hashes."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.mkdir(parents=True)
    root = project.root.resolve()
    for rel in project_files(project):
        if rel in files:
            continue
        src = project.root / rel
        if src.is_symlink() and not src.resolve().is_relative_to(root):
            continue  # never give a run a path into the world outside the project
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        shutil.copymode(src, target)
    for rel, text in files.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    os.replace(tmp, dest)
    return readonly_hashes(project, dest)


def tampered_files(project: Project, root: Path, before: dict[str, str]) -> list[str]:
    after = readonly_hashes(project, root)
    return sorted(rel for rel in before if after.get(rel) != before[rel])


# -- git keep branch ------------------------------------------------------------------------------------------------
def _git(root: Path, *args: str, env: dict | None = None, input: str | None = None) -> str:
    full_env = {**os.environ, "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "fleetlab"),
                "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "fleetlab@localhost"),
                "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", "fleetlab"),
                "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", "fleetlab@localhost"), **(env or {})}
    r = subprocess.run(["git", *args], cwd=root, env=full_env, input=input, capture_output=True, text=True)
    if r.returncode != 0:
        raise FleetlabError(f"git {' '.join(args[:2])} failed in {root}: {r.stderr.strip().splitlines()[-1:] or ''}")
    return r.stdout.strip()


def is_git_repo(root: Path) -> bool:
    return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode == 0


def commit_keep(project: Project, tag: str, files: dict[str, str], message: str) -> str | None:
    """Commit the kept variant's editable files on branch fleetlab/<tag>, without touching the working tree.

    The branch starts at HEAD the first time. Returns the commit hash (None when the project is not a git repo).
    """
    root = project.root
    if not is_git_repo(root):
        return None
    ref = f"refs/heads/fleetlab/{tag}"
    try:
        parent = _git(root, "rev-parse", "--verify", "-q", ref)
    except FleetlabError:
        try:
            parent = _git(root, "rev-parse", "--verify", "-q", "HEAD")
        except FleetlabError:
            parent = ""
    index = project.state_dir / "keep.index"
    index.parent.mkdir(parents=True, exist_ok=True)
    env = {"GIT_INDEX_FILE": str(index)}
    if parent:
        _git(root, "read-tree", parent, env=env)
    else:
        _git(root, "read-tree", "--empty", env=env)
    for rel, text in files.items():
        blob = _git(root, "hash-object", "-w", "--stdin", input=text)
        _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
    tree = _git(root, "write-tree", env=env)
    args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
    commit = _git(root, *args)
    _git(root, "update-ref", ref, commit)
    index.unlink(missing_ok=True)
    return commit


def keep_branch_files(project: Project, tag: str, files: dict[str, str]) -> dict[str, str] | None:
    """`files`' names as the keep branch fleetlab/<tag> holds them (None: no such branch); a name the branch lacks is
    left out. The scheduler compares them with the store's incumbent when a session starts."""
    root, ref = project.root, f"refs/heads/fleetlab/{tag}"
    if subprocess.run(["git", "rev-parse", "--verify", "-q", ref], cwd=root, capture_output=True).returncode != 0:
        return None
    out = {}
    for rel in files:
        r = subprocess.run(["git", "show", f"{ref}:{rel}"], cwd=root, capture_output=True)
        if r.returncode == 0:
            out[rel] = r.stdout.decode("utf-8", "replace")
    return out


def _short(text: str, n: int = 60) -> str:
    text = text.strip().replace("\n", "\\n")
    return repr(text[:n] + ("..." if len(text) > n else ""))
