"""Surfaces: the simulated truth a `sim:` fleet evaluates, and how to load one.

The Surface protocol (stable; a user surface is any object with these attributes):

- ``space``: dict, knob name -> ``{"low": float, "high": float, "log": bool}`` (a continuous or integer range; add
  ``"int": True`` for integers) or ``{"choices": [v1, v2, ...]}`` (categorical). Knob names are those of the project's
  editable file as `fleetlab.knobs.read_knobs` reports them (``MATRIX_LR``, ``ADAM_BETAS[0]``, ...).
- ``baseline``: dict, knob name -> value: the project's train.py as shipped.
- ``hardware`` (optional): dict, hardware name -> relative speed (1.0 = the reference class). The first name is the
  default hardware of a fleet spec without one (``sim:4``). Missing: ``{"cpu": 1.0}``.
- ``evaluate(config: dict, hardware: str, seed: int | None) -> dict`` with
    ``metric``: float, or None when the run crashes (out of memory, diverged, rejected config);
    ``seconds``: the run's wall time (training plus start-up and evaluation);
    optional ``curve``: list of ``(elapsed_s, metric)`` progress points (elapsed training seconds), for early stopping;
    optional ``memory_gb``, ``steps`` and ``error`` (one line printed by a crashed run).
  ``seed=None`` returns the noise-free truth; an integer seed returns one noisy measurement, the same for the same
  seed. ``config`` may omit knobs: missing ones take their baseline value.
- ``optimum`` (optional): the best noise-free metric on the fastest hardware class.
- ``noise_sigma`` (optional): the standard deviation of the measurement noise.
- ``goal`` (optional): "minimize" (default) or "maximize".
- Optional, for the simulated fleet and the bench harness: ``metric_name`` (the printed metric, default ``val_bpb``),
  ``time_budget_s`` (training seconds per run; progress points are in training seconds), ``startup_s`` (wall seconds
  before training starts), ``constraints`` (expressions over knob names, written into the bench project's
  ``[knobs] constraints`` so strategies never propose what the project rejects).

`load_surface(spec)` takes a built-in name (see `SURFACES`), optionally with options as ``name?key=value,key=value``
(``noisy-bowl?sigma=0.002``), or ``path/to/file.py:FACTORY`` where ``FACTORY()`` returns a surface.

The small built-ins have a known truth and exist for tests: `quadratic` (deterministic by default) and `noisy-bowl`
(noise, a known additive hardware effect, a crash region).
"""

from __future__ import annotations

import importlib.util
import math
import zlib
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from fleetlab.errors import FleetlabError, UnknownName

__all__ = ["Surface", "load_surface", "SURFACES", "Quadratic", "NoisyBowl", "seeded_gauss", "config_key", "check_surface"]


@runtime_checkable
class Surface(Protocol):
    space: dict[str, dict[str, Any]]
    baseline: dict[str, Any]

    def evaluate(self, config: dict[str, Any], hardware: str, seed: int | None) -> dict[str, Any]: ...


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def config_key(config: dict[str, Any]) -> int:
    """A stable 32-bit key of a config (the same in every process, unlike `hash` of strings)."""
    return zlib.crc32(repr(sorted(config.items())).encode())


def seeded_gauss(seed: int, key: int = 0) -> float:
    """A standard normal draw fixed by (seed, key): the same seed measures the same config the same way."""
    x = _splitmix64((int(seed) & 0xFFFFFFFF) << 32 | (int(key) & 0xFFFFFFFF))
    u1 = ((x >> 11) + 1) / 9007199254740993.0  # in (0, 1]
    u2 = (_splitmix64(x) >> 11) / 9007199254740992.0
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


# ---------------------------------------------------------------------------------------------------------------------
# Small surfaces with a known truth


class Quadratic:
    """metric = 1 + sum_i (x_i - c_i)^2 over `dims` knobs X0..X{n-1} in [-1, 1]; optimum 1.0 at x = c.

    Deterministic unless `sigma` > 0. One hardware class unless `hardware` is given; every run takes `seconds`.
    """

    goal = "minimize"

    def __init__(self, dims: int = 2, sigma: float = 0.0, seconds: float = 60.0, hardware: dict[str, float] | None = None):
        self.dims = int(dims)
        self.noise_sigma = float(sigma)
        self.seconds = float(seconds)
        self.hardware = dict(hardware or {"cpu": 1.0})
        self.center = [round(0.3 - 0.5 * i / max(1, self.dims), 3) for i in range(self.dims)]
        self.space = {f"X{i}": {"low": -1.0, "high": 1.0, "log": False} for i in range(self.dims)}
        self.baseline = {f"X{i}": 0.8 for i in range(self.dims)}
        self.optimum = 1.0

    def evaluate(self, config: dict[str, Any], hardware: str, seed: int | None) -> dict[str, Any]:
        x = [float(config.get(f"X{i}", self.baseline[f"X{i}"])) for i in range(self.dims)]
        truth = 1.0 + sum((xi - ci) ** 2 for xi, ci in zip(x, self.center))
        noise = 0.0 if seed is None or self.noise_sigma == 0 else self.noise_sigma * seeded_gauss(seed, config_key(config))
        return {"metric": truth + noise, "seconds": self.seconds / self.hardware.get(hardware, 1.0)}


class NoisyBowl:
    """A bowl with measurement noise, a known hardware effect and a crash region, for tests of noise and keep rules.

    Knobs: LR (log range 1e-3..1e-1, optimum 1e-2), WD (0..0.5, optimum 0.1), WIDTH (choices 64..512, optimum 256)
    and ACT (categorical, "relu2" best by `act_gain`). truth = 1.0 + curvature terms; on hardware h the truth is
    shifted by `offsets[h]` (default H200: -0.005, H100: 0). A run measures truth + N(0, sigma) with sigma fixed per
    (seed, config). LR above `crash_lr` diverges (metric None). Runs take `seconds` divided by the hardware speed.
    """

    goal = "minimize"

    def __init__(self, sigma: float = 0.002, seconds: float = 300.0, h200_offset: float = -0.005,
                 crash_lr: float = 0.05, act_gain: float = 0.006):
        self.noise_sigma = float(sigma)
        self.seconds = float(seconds)
        self.hardware = {"H100": 1.0, "H200": 283 / 263}
        self.offsets = {"H100": 0.0, "H200": float(h200_offset)}
        self.crash_lr = float(crash_lr)
        self.act_gain = float(act_gain)
        self.space = {
            "LR": {"low": 1e-3, "high": 1e-1, "log": True},
            "WD": {"low": 0.0, "high": 0.5, "log": False},
            "WIDTH": {"choices": [64, 128, 256, 512]},
            "ACT": {"choices": ["relu", "gelu", "relu2"]},
        }
        self.baseline = {"LR": 0.003, "WD": 0.3, "WIDTH": 128, "ACT": "relu"}
        fastest = max(self.hardware, key=self.hardware.get)
        self.optimum = 1.0 - self.act_gain + self.offsets[fastest]

    def truth(self, config: dict[str, Any], hardware: str = "H100") -> float:
        c = {**self.baseline, **config}
        lr = max(float(c["LR"]), 1e-9)
        value = 1.0 + 0.01 * math.log(lr / 1e-2) ** 2 + 0.04 * (float(c["WD"]) - 0.1) ** 2
        value += 0.003 * math.log2(float(c["WIDTH"]) / 256) ** 2
        value -= {"relu": 0.0, "gelu": self.act_gain / 2, "relu2": self.act_gain}.get(str(c["ACT"]), 0.0)
        return value + self.offsets.get(hardware, 0.0)

    def evaluate(self, config: dict[str, Any], hardware: str, seed: int | None) -> dict[str, Any]:
        seconds = self.seconds / self.hardware.get(hardware, 1.0)
        c = {**self.baseline, **config}
        if float(c["LR"]) > self.crash_lr:
            return {"metric": None, "seconds": 20.0, "error": "loss is NaN: training diverged"}
        value = self.truth(c, hardware)
        if seed is not None and self.noise_sigma > 0:
            value += self.noise_sigma * seeded_gauss(seed, config_key(c))
        return {"metric": value, "seconds": seconds}


# ---------------------------------------------------------------------------------------------------------------------
# Registry and loader


def _autoresearch(**options: Any) -> Any:
    from fleetlab.bench.autoresearch import AutoresearchSurface

    return AutoresearchSurface(**options)


SURFACES: dict[str, Callable[..., Any]] = {
    "autoresearch": _autoresearch,
    "quadratic": Quadratic,
    "noisy-bowl": NoisyBowl,
}


def _parse_options(text: str, spec: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise FleetlabError(f"surface option {part!r} in {spec!r} is not key=value")
        try:
            options[key.strip().replace("-", "_")] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            options[key.strip().replace("-", "_")] = value.strip()
    return options


def _load_file(spec: str) -> Any:
    path_text, _, factory_name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not factory_name.isidentifier():
        raise FleetlabError(f"surface {spec!r} must be written path/to/file.py:FACTORY with FACTORY a Python name")
    if not path.is_file():
        raise FleetlabError(f"surface file {str(path)!r} does not exist")
    module_name = f"fleetlab_user_surface_{abs(hash(str(path.resolve())))}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:  # a user's file: any error becomes one sentence
        raise FleetlabError(f"surface file {str(path)!r} failed to import: {type(e).__name__}: {e}") from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise FleetlabError(f"surface file {str(path)!r} has no callable {factory_name!r}")
    try:
        surface = factory()
    except Exception as e:
        raise FleetlabError(f"surface factory {factory_name!r} in {str(path)!r} failed: {type(e).__name__}: {e}") from e
    return surface


def check_surface(surface: Any, where: str = "surface") -> Any:
    """Raise FleetlabError (one sentence) unless `surface` follows the protocol; return it."""
    for attr in ("space", "baseline"):
        if not isinstance(getattr(surface, attr, None), dict):
            raise FleetlabError(f"{where} has no dict attribute {attr!r} (see fleetlab.bench.surfaces for the protocol)")
    if not callable(getattr(surface, "evaluate", None)):
        raise FleetlabError(f"{where} has no evaluate(config, hardware, seed) method")
    for name, dom in surface.space.items():
        if not isinstance(dom, dict) or not ("choices" in dom or ("low" in dom and "high" in dom)):
            raise FleetlabError(f"{where}: knob {name!r} needs {{'low', 'high'}} or {{'choices'}}, got {dom!r}")
    hardware = getattr(surface, "hardware", None)
    if hardware is not None and (not isinstance(hardware, dict) or not hardware):
        raise FleetlabError(f"{where}: 'hardware' must be a non-empty dict of hardware name -> relative speed")
    return surface


def load_surface(spec: str | Any, **options: Any) -> Any:
    """A surface from a built-in name (options as ``name?key=value,...`` or keyword arguments) or ``file.py:FACTORY``.

    An object that already follows the protocol is returned as it is.
    """
    if not isinstance(spec, str):
        return check_surface(spec)
    if ".py:" in spec or spec.endswith(".py"):
        if spec.endswith(".py"):
            raise FleetlabError(f"surface {spec!r} names a file but no factory: write {spec}:FACTORY")
        if options:
            raise FleetlabError(f"surface options ({', '.join(sorted(options))}) apply to built-in surfaces only; "
                                f"give {spec} its own defaults")
        return check_surface(_load_file(spec), where=f"surface {spec!r}")
    name, _, query = spec.partition("?")
    factory = SURFACES.get(name.strip())
    if factory is None:
        raise UnknownName("surface", name, list(SURFACES))
    opts = {**_parse_options(query, spec), **options}
    try:
        return check_surface(factory(**opts), where=f"surface {name!r}")
    except TypeError as e:
        raise FleetlabError(f"surface {name!r} does not take these options {sorted(opts)}: {e}") from e
