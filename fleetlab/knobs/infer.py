"""Inferring a search space from a file's knobs, and applying fleetlab.toml's `[knobs]` overrides.

How the space is inferred (infer_space); every rule can be overridden in fleetlab.toml `[knobs]`:
- bool: choices (True, False).
- str: fixed, choices=(value,), unless an override lists choices.
- int that is a power of two >= 2 (however written): kind "pow2", choices v/4, v/2, v, 2v, 4v (those >= 1).
- other int: linear integer range v +- max(1, floor(|v|/2)), never below 1 when v >= 1; v == 0 gives [0, 1].
- float named like a beta or momentum (BETA, MOMENTUM in the name) or in [0.8, 1): [max(0, 1 - 4(1-v)), 0.999]
  (0.95 -> [0.8, 0.999], 0.8 -> [0.2, 0.999]) on a log(1 - x) scale (`log1m`): 0.9 -> 0.99 is as far as 0.99 ->
  0.999, as an averaging horizon 1/(1 - beta) says it is. On a linear scale a move of a fifth of [0.9, 0.999] takes a
  beta at 0.98 to the end of the range, three units of log(1 - x) away. Measured on the `autoresearch` surface
  (13xH100+3xH200, `auto`, no pruning), 0.975 reached within the run in 28/50 seeds against 15/50 on the linear
  scale (seeds 0-9, 3 h: 4/10 against 7/10; seeds 10-29, 2.5 h: 10/20 against 3/20; seeds 30-49, 3 h: 14/20
  against 5/20), median best at 2 h 0.97561 / 0.97612 / 0.97587 against 0.97512 / 0.97626 / 0.97686.
- float named like a fraction (RATIO, FRAC, PROB, DROPOUT in the name) with 0 <= v <= 1: linear
  [max(0, v - s), min(1, v + s)] with s = max(0.25, v) (0.5 -> [0, 1], 0.0 -> [0, 0.25], 0.2 -> [0, 0.45]).
- other float v > 0: log range [v/4, 4v]; v == 0: linear [0, 0.1]; v < 0: linear [4v, v/4].
- names matching SEED, TIME_BUDGET or EVAL are read but not searched (they change the measurement, not the model);
  they sit in `Space.fixed` until an override gives them a range or choices.
Bounds are rounded to 6 significant digits, sampled floats to 4.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fleetlab.errors import ConfigError, ProposalRejected
from fleetlab.knobs.source import _coerce, _parsed, _Parsed, _evaluate_derived
from fleetlab.knobs.space import Knob, Space, _round_sig, _split_element
from fleetlab.safe_expr import is_number as _is_number

_NOT_SEARCHED = re.compile(r"(^|_)(SEED|TIME_BUDGET|EVAL)(_|$)")
_BETA_NAME = re.compile(r"BETA|MOMENTUM")
_FRACTION_NAME = re.compile(r"RATIO|FRAC|PROB|DROPOUT")
OVERRIDE_KEYS = ("low", "high", "log", "log1m", "choices", "fixed")


def infer_space(source: str, overrides: dict[str, dict] | None = None, constraints: list[str] | None = None,
                constants: dict[str, Any] | None = None) -> Space:
    """The search space of `source`'s knobs (rules in the module docstring), with fleetlab.toml's `[knobs]` applied.

    overrides: {NAME: {low, high, log} | {choices: [...]} | {fixed: true}}; NAME may be a tuple element
    ("ADAM_BETAS[0]"), a whole tuple (applies to each element) or a constant that is not a literal knob.
    constraints: Python expressions that every config must satisfy.
    constants: extra constants visible to constraints, e.g. read_knobs of a read-only prepare.py (MAX_SEQ_LEN);
    the file's own constants win."""
    parsed = _parsed(source)
    if constants:
        all_constants = _evaluate_derived({**constants, **parsed.literals}, list(parsed.derived))
    else:
        all_constants = dict(parsed.constants)
    knobs: dict[str, Knob] = {}
    fixed: dict[str, Any] = {}
    for name, value in parsed.knobs.items():
        if _NOT_SEARCHED.search(_split_element(name)[0]):
            fixed[name] = value
        else:
            knobs[name] = _infer(name, value)
    for key, spec in (overrides or {}).items():
        _check_spec(key, spec)
        names = _override_targets(key, parsed, all_constants)
        for name in names:
            value = parsed.knobs.get(name, all_constants.get(name))
            if spec.get("fixed"):
                knobs.pop(name, None)
                fixed[name] = value
                continue
            base = knobs.get(name) or (_infer(name, value) if _is_knob_value(value) else None)
            if base is None:
                raise ConfigError(f"knobs.{key} names {name}, whose value {value!r} is not a number, string or bool",
                                  key=f"knobs.{key}")
            knobs[name] = _override(base, spec, f"knobs.{key}")
            fixed.pop(name, None)
    derived = tuple((n, e) for n, e in parsed.derived if n in all_constants and n not in knobs and n not in fixed)
    return Space(knobs=knobs, constraints=list(constraints or []), constants=all_constants, fixed=fixed,
                 derived=derived)


def check_overrides(table: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """fleetlab.toml's `[knobs]` table split into (overrides, constraints), each entry's shape checked; whether the
    names exist in the knob file is checked when the space is built (infer_space), which needs the file."""
    overrides: dict[str, dict[str, Any]] = {}
    constraints: list[str] = []
    for name, spec in table.items():
        if name == "constraints":
            if not (isinstance(spec, list) and all(isinstance(c, str) for c in spec)):
                raise ConfigError("knobs.constraints must be a list of expressions (strings)", key="knobs.constraints")
            constraints = list(spec)
            continue
        _check_spec(name, spec)
        overrides[name] = dict(spec)
    return overrides, constraints


def _check_spec(name: str, spec: Any) -> None:
    key = f"knobs.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{key} must be a table such as {{ low = 0.01, high = 0.1, log = true }}", key=key)
    unknown = sorted(set(spec) - set(OVERRIDE_KEYS))
    if unknown:
        raise ConfigError(f"{key} has unknown setting {unknown[0]!r}; valid settings are {', '.join(OVERRIDE_KEYS)}",
                          key=key)
    for flag in ("log", "log1m", "fixed"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise ConfigError(f"{key}.{flag} must be true or false, not {spec[flag]!r}", key=key)
    if "choices" in spec and not (isinstance(spec["choices"], list) and spec["choices"]):
        raise ConfigError(f"{key}.choices must be a non-empty list", key=key)
    for bound in ("low", "high"):
        v = spec.get(bound)
        if bound in spec and not (_is_number(v) and not isinstance(v, bool) and math.isfinite(v)):
            raise ConfigError(f"{key}.{bound} must be a finite number, not {v!r}", key=key)
    if "low" in spec and "high" in spec and spec["low"] > spec["high"]:
        raise ConfigError(f"{key} needs numbers low <= high, not low={spec['low']!r}, high={spec['high']!r}", key=key)


def _is_knob_value(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not (isinstance(value, float) and not math.isfinite(value))


def _override_targets(key: str, parsed: _Parsed, constants: dict[str, Any]) -> list[str]:
    if key in parsed.knobs:
        return [key]
    elements = [n for n in parsed.knobs if n.startswith(key + "[")]
    if elements:
        return elements
    if key in parsed.slots and key in constants:
        return [key]
    raise ConfigError(f"knobs.{key} names no UPPERCASE constant of train.py", key=f"knobs.{key}")


def _infer(name: str, value: Any) -> Knob:
    if isinstance(value, bool):
        return Knob(name, value, "bool", choices=(True, False) if value else (False, True))
    if isinstance(value, str):
        return Knob(name, value, "str", choices=(value,))
    if isinstance(value, int):
        if value >= 2 and value & (value - 1) == 0:
            choices = tuple(c for c in (value // 4, value // 2, value, value * 2, value * 4) if c >= 1)
            return Knob(name, value, "pow2", choices=choices)
        if value == 0:
            return Knob(name, value, "int", low=0, high=1)
        delta = max(1, abs(value) // 2)
        low = max(1, value - delta) if value >= 1 else value - delta
        return Knob(name, value, "int", low=low, high=value + delta)
    base = _split_element(name)[0]
    v = float(value)
    if 0 <= v < 1 and (_BETA_NAME.search(base) or v >= 0.8):
        return Knob(name, v, "float", low=_round_sig(max(0.0, 1 - 4 * (1 - v)), 6), high=max(0.999, _round_sig(
            1 - (1 - v) / 4, 6)), log1m=True)
    if 0 <= v <= 1 and _FRACTION_NAME.search(base):
        s = max(0.25, v)
        return Knob(name, v, "float", low=_round_sig(max(0.0, v - s), 6), high=_round_sig(min(1.0, v + s), 6))
    if v > 0:
        return Knob(name, v, "float", low=_round_sig(v / 4, 6), high=_round_sig(v * 4, 6), log=True)
    if v == 0:
        return Knob(name, v, "float", low=0.0, high=0.1)
    return Knob(name, v, "float", low=_round_sig(v * 4, 6), high=_round_sig(v / 4, 6))


def _override(knob: Knob, spec: dict, key: str) -> Knob:
    value = knob.value
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{key}.choices must be a non-empty list", key=key)
        coerced = []
        for c in choices:
            try:
                coerced.append(_coerce(knob.name, value, c))
            except ProposalRejected:
                raise ConfigError(f"{key}.choices holds {c!r}, which is not a value of the same type as "
                                  f"{knob.name} = {value!r}", key=key) from None
        if value not in coerced:
            coerced.insert(0, value)
        kind = knob.kind
        if kind == "pow2" and any(c < 1 or c & (c - 1) for c in coerced):
            kind = "int"
        return Knob(knob.name, value, kind, choices=tuple(dict.fromkeys(coerced)))
    if not any(k in spec for k in ("low", "high", "log", "log1m")):
        return knob
    if knob.kind in ("str", "bool"):
        raise ConfigError(f"{key} gives a range to {knob.name}, which holds {type(value).__name__} values; "
                          f"give choices instead", key=key)
    low, high = spec.get("low"), spec.get("high")
    if knob.choices is not None:  # pow2 (or choices): fall back to the span of the inferred choices
        low = min(knob.choices) if low is None else low
        high = max(knob.choices) if high is None else high
    low = knob.low if low is None else low
    high = knob.high if high is None else high
    if not (_is_number(low) and _is_number(high)) or low > high:
        raise ConfigError(f"{key} needs numbers low <= high, not low={low!r}, high={high!r}", key=key)
    # an inferred log scale does not survive an explicit range that starts at or below zero; an explicit log does
    log = bool(spec.get("log", knob.log and low > 0))
    if log and low <= 0:
        raise ConfigError(f"{key} asks for a log range but low={low!r} is not positive", key=key)
    # log(1 - x) likewise: inferred for betas, kept under an explicit range below 1 unless `log` or `log1m` says
    log1m = bool(spec.get("log1m", knob.log1m and high < 1 and not log))
    if log1m and (log or high >= 1 or knob.kind != "float"):
        why = ("it also asks for a log range" if log else f"high={high!r} is not below 1" if high >= 1
               else f"{knob.name} is not a float")
        raise ConfigError(f"{key} asks for a log(1 - x) range but {why}", key=key)
    if knob.kind == "pow2":
        choices = tuple(2 ** k for k in range(0, 64) if low <= 2 ** k <= high)
        if not choices:
            raise ConfigError(f"{key} range [{low}, {high}] holds no power of two", key=key)
        return Knob(knob.name, value, "pow2", choices=choices)
    if knob.kind == "int":
        return Knob(knob.name, value, "int", low=int(math.ceil(low)), high=int(math.floor(high)), log=log)
    return Knob(knob.name, value, "float", low=float(low), high=float(high), log=log, log1m=log1m)


