"""The search space: knobs with their ranges or choices, constraints over them, and sampling.

A numeric knob is searched on the axis `warp` gives it (log x for `log`, -log(1 - x) for `log1m`), so sampling,
neighbours and the strategies' unit positions all move evenly on that axis.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Any

from fleetlab.errors import ConfigError, ProposalRejected
from fleetlab.safe_expr import CONSTRAINT_FUNCS as _CONSTRAINT_FUNCS
from fleetlab.safe_expr import EVAL_GLOBALS as _EVAL_GLOBALS
from fleetlab.safe_expr import compile_safe as _compile_safe
from fleetlab.safe_expr import describe as _describe
from fleetlab.safe_expr import is_number as _is_number
from fleetlab.safe_expr import names_in as _names_in

KINDS = ("float", "int", "pow2", "str", "bool")
_SAMPLE_TRIES = 2000
_MISSING = object()


@dataclass(frozen=True)
class Knob:
    """One searchable constant. A knob with `choices` is categorical whatever its kind (kind says how it is written);
    otherwise it ranges over [low, high], log-uniformly when `log`, uniformly in log(1 - x) when `log1m` (betas and
    momenta; high < 1)."""

    name: str                      # "MATRIX_LR", or "ADAM_BETAS[0]" for tuple elements
    value: Any                     # current value in the file
    kind: str                      # "float" | "int" | "pow2" | "str" | "bool"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    log1m: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "kind": self.kind, "low": self.low, "high": self.high,
                "log": self.log, "log1m": self.log1m,
                "choices": list(self.choices) if self.choices is not None else None}


@dataclass
class Space:
    """The search space: knobs, constraints over them, and the file's constants (for evaluating constraints).

    `fixed` holds constants read as knobs but excluded from the search (overrides `fixed = true`, seeds, budgets).
    Constraints are Python expressions over knob names and constants (`ADAM_BETAS[0] < ADAM_BETAS[1]` works: a tuple's
    elements are reassembled); they may use arithmetic, comparisons, `and/or/not`, `x if c else y` and
    abs/min/max/round/int/float, nothing else. A bad expression raises ConfigError when the space is built.
    """

    knobs: dict[str, Knob]
    constraints: list[str] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    derived: tuple = ()  # ((name, expression), ...): constants computed from others, re-evaluated per config

    def __post_init__(self) -> None:
        self._tuples: dict[str, int] = {}
        for name in self.knobs:
            base, index = _split_element(name)
            if index is not None:
                self._tuples[base] = max(self._tuples.get(base, 0), index + 1)
        known = set(self.constants) | set(self._tuples) | {n for n in self.knobs if "[" not in n}
        known |= {name for name, _ in self.derived}
        self._derived_code = []
        for name, expr in self.derived:
            if name not in self.knobs and name not in self.fixed:
                try:
                    self._derived_code.append((name, _compile_safe(expr, known | set(_CONSTRAINT_FUNCS), None)))
                except ValueError:
                    continue  # not computable from constants: keeps its value in `constants`, if any
        self._constraint_code = [(expr, _compile_safe(expr, known, "knobs.constraints")) for expr in self.constraints]
        base = self._namespace({})
        for expr, code in self._constraint_code:
            try:
                eval(code, _EVAL_GLOBALS, base)
            except Exception as e:  # noqa: BLE001 - any failure of the user's expression is reported as config
                raise ConfigError(f"knobs constraint {expr!r} fails on train.py's own values: {_describe(e)}",
                                  key="knobs.constraints") from None

    # -- validity -------------------------------------------------------------

    def violation(self, config: dict[str, Any]) -> str | None:
        """None if `config` may run; otherwise one sentence naming the violated bound, choice or constraint.

        Knobs missing from `config` take their current values; a constant that is not a knob may appear only with its
        current value (so the full read_knobs of a variant can be checked)."""
        for name, value in config.items():
            knob = self.knobs.get(name)
            if knob is None:
                current = self.fixed.get(name, self.constants.get(name, _MISSING))
                if current is _MISSING:
                    return f"{name} names no knob of this space"
                if value != current:
                    return f"{name} is fixed at {current!r} in this space, not {value!r}"
                continue
            problem = _bound_violation(knob, value)
            if problem:
                return problem
        if not self._constraint_code:
            return None
        ns = self._namespace(config)
        for expr, code in self._constraint_code:
            try:
                ok = eval(code, _EVAL_GLOBALS, ns)
            except Exception as e:  # noqa: BLE001
                return f"constraint {expr!r} cannot be evaluated ({_describe(e)})"
            if not ok:
                names = [n for n in _names_in(expr) if n in ns and n not in _CONSTRAINT_FUNCS]
                shown = ", ".join(f"{n}={ns[n]!r}" for n in names)
                return f"constraint {expr!r} does not hold" + (f" with {shown}" if shown else "")
        return None

    def _namespace(self, config: dict[str, Any]) -> dict[str, Any]:
        ns = dict(_CONSTRAINT_FUNCS)
        ns.update(self.constants)
        ns.update(self.fixed)
        values = {name: knob.value for name, knob in self.knobs.items()}
        values.update(config)
        for name, value in values.items():
            if "[" not in name:
                ns[name] = value
        for base, size in self._tuples.items():
            old = ns.get(base)
            elems = list(old) if isinstance(old, tuple) and len(old) >= size else [None] * size
            for i in range(size):
                if f"{base}[{i}]" in values:
                    elems[i] = values[f"{base}[{i}]"]
            ns[base] = tuple(elems)
        for name, code in self._derived_code:
            try:
                ns[name] = eval(code, _EVAL_GLOBALS, ns)
            except Exception:  # noqa: BLE001 - a derived constant that cannot be computed keeps its file value
                pass
        return ns

    # -- sampling -------------------------------------------------------------

    def sample(self, rng: random.Random, around: dict | None = None, scale: float = 1.0) -> dict[str, Any]:
        """A valid config over every knob, by rejection sampling against bounds and constraints.

        Without `around`: uniform over each knob (log-uniform for log ranges, uniform over choices). With `around`:
        each knob moves from its value there (or its current value) by a Gaussian step of 0.15*scale of its range (in
        log space for log ranges), ordered choices by about 0.5*scale positions, other categories switch with
        probability 0.15*scale. If nothing valid turns up near `around`, it samples the whole space; if the
        constraints admit nothing found in 2000 draws, ConfigError."""
        if around is not None:
            for _ in range(_SAMPLE_TRIES // 2):
                config = {n: _near(k, self.clip(n, around.get(n, k.value)), rng, scale) for n, k in self.knobs.items()}
                if self.violation(config) is None:
                    return config
        for _ in range(_SAMPLE_TRIES):
            config = {n: _draw(k, rng) for n, k in self.knobs.items()}
            if self.violation(config) is None:
                return config
        raise ConfigError(f"no config satisfying the knob constraints was found in {_SAMPLE_TRIES} random draws",
                          key="knobs.constraints")

    def clip(self, name: str, value: Any) -> Any:
        """The nearest allowed value of knob `name` to `value` (nearest choice, or clamped into [low, high])."""
        knob = self.knobs.get(name)
        if knob is None:
            raise ProposalRejected(f"{name} names no knob of this space", reason="unknown-knob")
        if knob.choices is not None:
            if value in knob.choices and type(value) is type(knob.value):
                return value
            numeric = [c for c in knob.choices if _is_number(c)]
            if _is_number(value) and len(numeric) == len(knob.choices):
                if knob.kind == "pow2" and value > 0:
                    return min(numeric, key=lambda c: abs(math.log2(c) - math.log2(value)))
                return min(numeric, key=lambda c: abs(c - value))
            return knob.value if knob.value in knob.choices else knob.choices[0]
        if not _is_number(value) or not math.isfinite(value):
            return knob.value
        value = min(max(value, knob.low), knob.high)
        return int(round(value)) if knob.kind == "int" else float(value)

    def to_dict(self) -> dict:
        return {"knobs": {n: k.to_dict() for n, k in self.knobs.items()}, "constraints": list(self.constraints),
                "fixed": dict(self.fixed), "constants": {n: _jsonable(v) for n, v in self.constants.items()}}



def _bound_violation(knob: Knob, value: Any) -> str | None:
    if knob.kind == "bool" and not isinstance(value, bool):
        return f"{knob.name} must be True or False, not {value!r}"
    if knob.kind == "str" and not isinstance(value, str):
        return f"{knob.name} must be a string, not {value!r}"
    if knob.kind in ("int", "pow2") and not _is_int(value):
        return f"{knob.name} must be an integer, not {value!r}"
    if knob.kind == "float" and not (_is_number(value) and math.isfinite(value)):
        return f"{knob.name} must be a finite number, not {value!r}"
    if knob.choices is not None:
        if value not in knob.choices:
            return f"{knob.name}={value!r} is not one of its choices {list(knob.choices)}"
        return None
    slack = 1e-9 * max(abs(knob.low), abs(knob.high), 1e-300)
    if not knob.low - slack <= value <= knob.high + slack:
        return f"{knob.name}={value!r} is outside its range [{knob.low}, {knob.high}]"
    return None


def warps(knob: Knob, *xs: float) -> bool:
    """Whether the knob is searched on a warped axis (`log`, `log1m`) and its range and `xs` lie in that axis's
    domain; otherwise positions and steps are linear in the value."""
    if knob.log:
        return all(x > 0 for x in (knob.low, *xs))
    if knob.log1m:
        return all(x < 1 for x in (knob.high, *xs))
    return False


def warp(knob: Knob, x: float) -> float:
    """A numeric knob's value on the scale it is searched on: log x for `log`, -log(1 - x) for `log1m` (increasing,
    like x), x itself otherwise."""
    if knob.log and x > 0:
        return math.log(x)
    if knob.log1m and x < 1:
        return -math.log1p(-x)
    return float(x)


def unwarp(knob: Knob, w: float) -> float:
    """The inverse of `warp`."""
    if knob.log:
        return math.exp(w)
    if knob.log1m:
        return -math.expm1(-w)
    return float(w)


def _draw(knob: Knob, rng: random.Random) -> Any:
    if knob.choices is not None:
        return rng.choice(knob.choices)
    x = unwarp(knob, rng.uniform(warp(knob, knob.low), warp(knob, knob.high)))
    return _finish(knob, x)


def _near(knob: Knob, value: Any, rng: random.Random, scale: float) -> Any:
    if knob.choices is not None:
        if all(_is_number(c) for c in knob.choices):
            ordered = sorted(knob.choices)
            i = ordered.index(value) + int(round(rng.gauss(0.0, 0.5 * scale)))
            return ordered[min(max(i, 0), len(ordered) - 1)]
        others = [c for c in knob.choices if c != value]
        return rng.choice(others) if others and rng.random() < 0.15 * scale else value
    if scale <= 0:
        return value
    if warps(knob, value):
        width = warp(knob, knob.high) - warp(knob, knob.low)
        x = unwarp(knob, warp(knob, value) + rng.gauss(0.0, 0.15 * scale * width))
    else:
        x = value + rng.gauss(0.0, 0.15 * scale * (knob.high - knob.low))
    return _finish(knob, x)


def _finish(knob: Knob, x: float) -> Any:
    x = min(max(x, knob.low), knob.high)
    if knob.kind == "int":
        return int(min(max(round(x), math.ceil(knob.low)), math.floor(knob.high)))
    return min(max(_round_sig(x, 4), knob.low), knob.high)


def _round_sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}") if x else 0.0



def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)



def _split_element(name: str) -> tuple[str, int | None]:
    if name.endswith("]") and "[" in name:
        base, _, index = name[:-1].partition("[")
        if index.isdigit():
            return base, int(index)
    return name, None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)

