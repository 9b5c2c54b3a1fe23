"""The sandbox every local run and setup command runs in: bubblewrap (`bwrap`), a tool built for exactly this.

A run sees the system read-only, its own run directory and its worker's cache directory writable, a private /tmp and
/dev/shm, its own PID namespace (every process it starts, `setsid` ones included, dies with it) and the GPU device
nodes. The project, its store, its git repository and the other runs are hidden (a run needs only its snapshot);
where something hidden is needed to run at all (a virtualenv inside the project), it comes back read-only.
Capabilities are dropped: as root, a process that keeps CAP_SYS_ADMIN could remount `/` writable.

A setup command sees the project read-only (store and repository hidden) and may write the shared data cache
(`$XDG_CACHE_HOME` or `~/.cache`, and `$FLEETLAB_CACHE` when set) that runs then read.

`[sandbox]` in fleetlab.toml:
    mode = "auto"      bwrap when it can run here, else unsandboxed with one warning; "bwrap" requires it; "none"
    network = true     false: runs and setup get a network namespace of their own (loopback only)

`node_script` gives the same sandbox to a command on a Ray or SkyPilot node, where bwrap is there.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fleetlab.errors import ConfigError

MODES = ("auto", "bwrap", "none")
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri")
# namespaces and limits shared by runs and setup: a PID namespace that dies with its parent, no capabilities
ISOLATION = ("--unshare-pid", "--unshare-ipc", "--die-with-parent", "--cap-drop", "ALL")
_PROBES: dict[str, str | None] = {}  # bwrap path -> None when it works here, else why not
_UVM_TRIED: list[bool] = []  # nvidia-modprobe is asked at most once per process


def probe(bwrap: str | None) -> str | None:
    """None when `bwrap` can build a sandbox on this machine, else one sentence saying why not (asked once)."""
    if not bwrap:
        return "bubblewrap (bwrap) is not installed"
    if bwrap not in _PROBES:
        argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *ISOLATION,
                "/bin/true"]
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
            why = None if r.returncode == 0 else (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as e:
            why = str(e)
        _PROBES[bwrap] = None if why is None else f"bwrap cannot create a sandbox here ({why})"
    return _PROBES[bwrap]


def _gpu_nodes() -> list[str]:
    """The GPU device nodes to bind. CUDA creates /dev/nvidia-uvm on first use through nvidia-modprobe, which a
    sandboxed process (no capabilities, its own /dev) cannot: where it is missing it is created here first, once."""
    if glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/nvidia-uvm") and not _UVM_TRIED:
        _UVM_TRIED.append(True)
        modprobe = shutil.which("nvidia-modprobe")
        if modprobe:
            try:
                subprocess.run([modprobe, "-u", "-c=0"], capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                pass
    return sorted({dev for pattern in GPU_DEVICES for dev in glob.glob(pattern)})


def data_cache_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Where setup commands keep data that runs read: the user's cache directory, and $FLEETLAB_CACHE when set."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    dirs = [Path(env.get("XDG_CACHE_HOME") or home / ".cache")]
    if env.get("FLEETLAB_CACHE"):
        dirs.append(Path(env["FLEETLAB_CACHE"]).expanduser())
    return [d.absolute() for d in dirs]


def _git_dirs(root: Path) -> list[Path]:
    """The repository around `root`: its top level and its git directory (absolute), [] outside a repository."""
    try:
        r = subprocess.run(["git", "rev-parse", "--show-toplevel", "--git-common-dir"], cwd=root, capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if r.returncode != 0:
        return []
    return [(root / line).resolve() for line in r.stdout.splitlines() if line.strip()]


def _under(path: Path, parents: list[Path]) -> bool:
    return any(path == p or path.is_relative_to(p) for p in parents)


def _needed() -> list[Path]:
    """What a command needs to run at all even when it lies in a hidden directory: the Python installation."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent,
             Path(sys.executable).parent}
    return sorted(p.resolve() for p in paths if p.is_dir())


class Sandbox:
    """How commands are wrapped on this machine. `active` is False when they run unsandboxed (`notice` says why)."""

    def __init__(self, mode: str = "auto", network: bool = True, project_root: Path | None = None,
                 bwrap: str | None = None, here: bool = True):
        if mode not in MODES:
            raise ConfigError(f"sandbox.mode must be one of {', '.join(MODES)}, not {mode!r}", key="sandbox.mode")
        if not isinstance(network, bool):
            raise ConfigError(f"sandbox.network must be true or false, not {network!r}", key="sandbox.network")
        self.mode, self.network = mode, network
        self.bwrap = bwrap or shutil.which("bwrap")
        self.notice: str | None = None
        self.active = False
        if mode != "none" and here:  # for remote nodes (`here=False`) the node itself decides, in node_script
            why = probe(self.bwrap)
            if why is None:
                self.active = True
            elif mode == "bwrap":
                raise ConfigError(f"sandbox.mode is \"bwrap\" but {why}; install bubblewrap or set "
                                  f"[sandbox] mode = \"none\"", key="sandbox.mode")
            else:
                self.notice = f"runs are not sandboxed: {why} (set [sandbox] mode = \"none\" to say so explicitly)"
        self.project_root = Path(project_root).resolve() if project_root is not None else None
        self._hidden: dict[Path, list[Path]] = {}  # project root -> what its commands never see

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None, project_root: Path | None = None,
                      here: bool = True) -> "Sandbox":
        """From the `[sandbox]` table; `here=False` for the nodes of a remote fleet (nothing is probed here)."""
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {"mode", "network"})
        if unknown:
            raise ConfigError(f"unknown key sandbox.{unknown[0]}; known keys of [sandbox] are: mode, network",
                              key=f"sandbox.{unknown[0]}")
        return cls(settings.get("mode", "auto"), settings.get("network", True), project_root, here=here)

    # -- local commands ------------------------------------------------------------------------------------------------

    def run_argv(self, workdir: Path, writable: list[Path] = ()) -> list[str]:
        """The bwrap arguments a run in `workdir` is started with (then `/bin/sh -c COMMAND`); [] when inactive.

        Hidden: /tmp, the directory of all runs, the project and the repository around it. Writable: `workdir` and
        `writable` (the worker's cache directory)."""
        if not self.active:
            return []
        workdir = Path(workdir).resolve()
        root = self._root_of(workdir)
        hidden = [workdir.parent, *self._project_hidden(root)] if root else [workdir.parent]
        readable = [d for d in data_cache_dirs() if d.is_dir()]
        return self._argv(hidden, readable, [workdir, *writable], chdir=workdir)

    def setup_argv(self, project_root: Path) -> list[str]:
        """The bwrap arguments of the project's setup command: the project read-only with its store and repository
        hidden, the shared data cache writable."""
        if not self.active:
            return []
        root = Path(project_root).resolve()
        caches = data_cache_dirs()
        for d in caches:
            d.mkdir(parents=True, exist_ok=True)
        hidden = [p for p in self._project_hidden(root) if p != root and not root.is_relative_to(p)]
        return self._argv(hidden, [root], caches, chdir=root)

    def _argv(self, hidden: list[Path], readable: list[Path], writable: list[Path], chdir: Path) -> list[str]:
        argv = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/dev/shm"]
        for dev in _gpu_nodes():
            argv += ["--dev-bind", dev, dev]
        argv += ["--proc", "/proc", "--tmpfs", "/tmp"]
        masked = [Path("/tmp")]
        hidden = sorted({d for d in hidden if d.is_dir()})
        for d in hidden:
            if not _under(d, masked):
                argv += ["--tmpfs", str(d)]
                masked.append(d)
        # what must stay readable though it lies in a hidden directory (hidden again what lies inside it); then the
        # writable directories
        back = sorted(d for d in {p for p in [*_needed(), *readable, chdir] if _under(p, masked)} - set(writable)
                      if d.exists())
        for d in back:
            argv += ["--ro-bind", str(d), str(d)]
        for d in hidden:
            if any(d != b and d.is_relative_to(b) for b in back):
                argv += ["--tmpfs", str(d)]
        for d in writable:
            argv += ["--bind", str(d), str(d)]
        argv += list(ISOLATION)
        if not self.network:
            argv.append("--unshare-net")
        return argv + ["--chdir", str(chdir)]

    def _root_of(self, workdir: Path) -> Path | None:
        """The project a run directory belongs to (`<root>/.fleetlab/runs/<id>`), or the configured one."""
        if workdir.parent.name == "runs" and workdir.parent.parent.name == ".fleetlab":
            return workdir.parent.parent.parent
        return self.project_root

    def _project_hidden(self, root: Path) -> list[Path]:
        if root not in self._hidden:
            self._hidden[root] = [root, root / ".fleetlab", *_git_dirs(root)]
        return self._hidden[root]

    # -- remote nodes --------------------------------------------------------------------------------------------------

    def node_script(self, command: str, setup: bool = False) -> str:
        """A shell command that runs `command` on a remote node in the same sandbox when bwrap works there (plainly
        where it does not, unless mode is "bwrap"). A run may write its current directory (its own copy); a setup
        command sees it read-only and may write the node's data cache."""
        if self.mode == "none":
            return command
        steps = ['set -- --ro-bind / / --dev /dev --tmpfs /dev/shm',
                 'for d in /dev/nvidia* /dev/dri; do [ -e "$d" ] && set -- "$@" --dev-bind "$d" "$d"; done',
                 'set -- "$@" --proc /proc --tmpfs /tmp',
                 # the node's Python (a virtual environment, or Ray's) may itself live under /tmp: bind it back
                 'for p in "$(command -v python3)" "$(command -v python)" "${VIRTUAL_ENV:-}/bin/python"; do '
                 'd=$(dirname "$(dirname "$p")"); case "$d" in /tmp/?*) [ -d "$d" ] && '
                 'set -- "$@" --ro-bind "$d" "$d";; esac; done']
        if setup:
            steps += ['set -- "$@" --ro-bind "$PWD" "$PWD"',
                      'c="${XDG_CACHE_HOME:-$HOME/.cache}"; mkdir -p "$c"; set -- "$@" --bind "$c" "$c"',
                      'if [ -n "${FLEETLAB_CACHE:-}" ]; then mkdir -p "$FLEETLAB_CACHE"; '
                      'set -- "$@" --bind "$FLEETLAB_CACHE" "$FLEETLAB_CACHE"; fi']
        else:
            steps.append('set -- "$@" --bind "$PWD" "$PWD"')
        net = " --unshare-net" if not self.network else ""
        steps.append(f'exec bwrap "$@" {" ".join(ISOLATION)}{net} --chdir "$PWD" /bin/sh -c {shlex.quote(command)}')
        check = ("command -v bwrap >/dev/null 2>&1 && bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp "
                 f"{' '.join(ISOLATION)} /bin/true >/dev/null 2>&1")
        plain = f"exec /bin/sh -c {shlex.quote(command)}"
        if self.mode == "bwrap":
            plain = "echo 'fleetlab: sandbox.mode is \"bwrap\" but bwrap cannot run on this node' >&2; exit 126"
        return f"if {check}; then {'; '.join(steps)}; else {plain}; fi"
