"""Knobs: the UPPERCASE module-level constants of an editable file, read and rewritten in place.

`read_knobs(source)` returns the literal constants of a train.py; `apply_knobs(source, values)` rewrites some of them
and leaves every other byte alone (comments, blank lines, spacing, quote style); `infer_space(source, overrides,
constraints)` turns them into a search space that strategies sample from without an LLM.

What counts as a knob (read_knobs):
- A statement directly in the module body assigning one UPPERCASE name (`^[A-Z][A-Z0-9_]*$`): `NAME = value` or
  `NAME: type = value`. Lowercase names, names inside functions, classes or `if` blocks, chained (`A = B = 1`) and
  unpacking (`A, B = 1, 2`) assignments are not knobs.
- The value is a literal: an int, a float, a string, a bool, a negative number, a power (`2**19`), or arithmetic on
  number literals only (`8 * 1024`, `3e-4 / 2`). A tuple of such numbers (`ADAM_BETAS = (0.8, 0.95)`) gives one knob per
  element, `ADAM_BETAS[0]`, `ADAM_BETAS[1]`. Lists, dicts, None, f-strings and expressions naming other constants
  (`EMBEDDING_LR = 0.6 * LR_MULT`) are not knobs; such expressions still count as constants for constraints, and an
  override in fleetlab.toml may make one a knob (its right-hand side is then rewritten as a literal).
- A name assigned more than once at module level is read from its first assignment; if a later module-level statement
  assigns it a literal again, the first assignment has no effect and the name is not a knob.

How values are written back (format_value): ints stay ints, floats stay floats and are written short (the shortest
decimal that is the same number to 12 significant digits, so never 0.30000000000000004), in scientific notation when
the original was and the value is below 0.1 or from 1e4 up (`1e-4` -> `2e-4`), powers of two as `2**18` when the
original was written as a power, strings in the original's quote style. A value equal to the current one leaves the
text untouched.

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

Speed: the source is parsed with the standard `ast` module once per distinct text (an LRU cache keyed by the text) into
the character spans of every knob's value; `apply_knobs` splices new literals into those spans (tens of microseconds)
and registers the result in the same cache, so reading back a text it wrote never parses again. libcst was measured
and not used: on the 536-line gpt template it takes ~210 ms to parse and ~45 ms to print, `ast` ~12-25 ms, and
splicing needs no printing at all.
"""

from __future__ import annotations

import ast
import math
import numbers
import random
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fleetlab.errors import ConfigError, ProposalRejected
from fleetlab.safe_expr import CONSTRAINT_FUNCS as _CONSTRAINT_FUNCS
from fleetlab.safe_expr import EVAL_GLOBALS as _EVAL_GLOBALS
from fleetlab.safe_expr import compile_safe as _compile_safe
from fleetlab.safe_expr import describe as _describe
from fleetlab.safe_expr import is_number as _is_number
from fleetlab.safe_expr import names_in as _names_in

__all__ = ["Knob", "Space", "read_knobs", "read_constants", "apply_knobs", "infer_space", "format_value", "KINDS",
           "warp", "unwarp", "warps"]

KINDS = ("float", "int", "pow2", "str", "bool")
_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_POW2_TEXT = re.compile(r"^(\s*2\s*\*\*\s*)(\(?\s*-?\s*\d+\s*\)?)\s*$")
_NOT_SEARCHED = re.compile(r"(^|_)(SEED|TIME_BUDGET|EVAL)(_|$)")
_BETA_NAME = re.compile(r"BETA|MOMENTUM")
_FRACTION_NAME = re.compile(r"RATIO|FRAC|PROB|DROPOUT")
_OVERRIDE_KEYS = ("low", "high", "log", "log1m", "choices", "fixed")
_SAMPLE_TRIES = 2000


# ---------------------------------------------------------------------------
# Records


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


_MISSING = object()


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


# ---------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class _Slot:
    """Where one knob's (or one rewritable constant's) value sits in the source: characters [start, end)."""

    start: int
    end: int
    value: Any     # the literal value, or _MISSING for an expression (rewritable only by an override)
    text: str      # the original text of the value, for format_value's `like`


@dataclass(frozen=True)
class _Parsed:
    slots: dict[str, _Slot]            # knob name -> slot (tuple elements as NAME[i]); expressions included
    knobs: dict[str, Any]              # literal knobs only, in file order: what read_knobs returns
    literals: dict[str, Any]           # every UPPERCASE constant with a literal value (tuples whole, lists, ...)
    derived: tuple                     # ((name, expression text), ...) constants assigned an expression
    constants: dict[str, Any]          # literals plus the derived ones computable from them


_CACHE: OrderedDict[str, _Parsed] = OrderedDict()
_CACHE_SIZE = 512  # texts; a 600-line train.py is ~25 KB
_CACHE_LOCK = threading.Lock()  # strategies may run in threads


def _parsed(source: str) -> _Parsed:
    with _CACHE_LOCK:
        hit = _CACHE.get(source)
        if hit is not None:
            _CACHE.move_to_end(source)
            return hit
    parsed = _parse(source)
    _remember(source, parsed)
    return parsed


def _remember(source: str, parsed: _Parsed) -> None:
    with _CACHE_LOCK:
        _CACHE[source] = parsed
        _CACHE.move_to_end(source)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _parse(source: str) -> _Parsed:
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ProposalRejected(f"the file does not parse as Python (line {e.lineno}: {e.msg})",
                               reason="syntax") from None
    starts = [0] + [m.end() for m in _NEWLINE.finditer(source)]
    lines: dict[int, str] = {}

    def offset(lineno: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets; convert to characters on non-ASCII lines
        start = starts[lineno - 1]
        line = lines.get(lineno)
        if line is None:
            end = starts[lineno] if lineno < len(starts) else len(source)
            line = lines[lineno] = source[start:end]
        if not line.isascii():
            col = len(line.encode("utf-8")[:col].decode("utf-8", "replace"))
        return start + col

    def slot(node: ast.expr, value: Any) -> _Slot:
        a, b = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
        return _Slot(a, b, value, source[a:b])

    slots: dict[str, _Slot] = {}
    knobs: dict[str, Any] = {}
    literals: dict[str, Any] = {}
    derived: list[tuple[str, str]] = []
    first: dict[str, ast.expr] = {}
    literal_again: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, node = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, node = stmt.target.id, stmt.value
        else:
            continue
        if not _UPPER.match(name):
            continue
        if name in first:
            if _literal(node) is not _MISSING:
                literal_again.add(name)
            continue
        first[name] = node
    for name, node in first.items():
        if name in literal_again:
            continue
        value = _literal(node)
        if isinstance(value, (int, float, str)):
            slots[name] = slot(node, value)
            knobs[name] = literals[name] = value
        elif isinstance(node, ast.Tuple) and node.elts and all(_is_number(_literal(e)) for e in node.elts):
            elems = [_literal(e) for e in node.elts]
            literals[name] = tuple(elems)
            for i, (e, v) in enumerate(zip(node.elts, elems)):
                slots[f"{name}[{i}]"] = slot(e, v)
                knobs[f"{name}[{i}]"] = v
        elif value is not _MISSING:
            literals[name] = value  # a tuple of strings, a list: a constant, not a knob
        else:
            slots[name] = slot(node, _MISSING)
            derived.append((name, slots[name].text))
    return _Parsed(slots, knobs, literals, tuple(derived), _evaluate_derived(literals, derived))


def _evaluate_derived(constants: dict[str, Any], derived) -> dict[str, Any]:
    """`constants` plus every derived constant computable from them (in file order), safely evaluated."""
    ns = dict(constants)
    for name, expr in derived:
        code = _derived_code(expr)
        if code is None:
            continue
        try:
            ns[name] = eval(code, _EVAL_GLOBALS, ns)
        except Exception:  # noqa: BLE001 - not computable from the file alone (an imported name): not a constant
            continue
    return ns


_DERIVED_CODE: dict[str, Any] = {}


def _derived_code(expr: str):
    """Compiled `expr` if it uses only what constraints may use (names unchecked), else None. Cached by text."""
    if expr not in _DERIVED_CODE:
        if len(_DERIVED_CODE) > 4096:
            _DERIVED_CODE.clear()
        try:
            _DERIVED_CODE[expr] = _compile_safe(expr, None, None)
        except ValueError:
            _DERIVED_CODE[expr] = None
    return _DERIVED_CODE[expr]


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}


def _literal(node: ast.expr) -> Any:
    """The value of a literal expression (numbers and arithmetic on them, strings, bools, containers of literals),
    or _MISSING."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, (int, float, str)) else _MISSING
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if not _is_number(v):
            return _MISSING
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _literal(node.left), _literal(node.right)
        if not (_is_number(a) and _is_number(b)) or (isinstance(node.op, ast.Pow) and abs(b) > 256):
            return _MISSING
        try:
            return _BINOPS[type(node.op)](a, b)
        except (ArithmeticError, ValueError):
            return _MISSING
    if isinstance(node, (ast.Tuple, ast.List)):
        elems = [_literal(e) for e in node.elts]
        if any(e is _MISSING for e in elems):
            return _MISSING
        return tuple(elems) if isinstance(node, ast.Tuple) else elems
    return _MISSING


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def read_knobs(source: str) -> dict[str, Any]:
    """The knobs of `source` in file order: {"MATRIX_LR": 0.04, "ADAM_BETAS[0]": 0.8, "WINDOW_PATTERN": "SSSL", ...}.

    Raises ProposalRejected if the source is not valid Python. Cached by text: repeated reads cost a dict copy."""
    return dict(_parsed(source).knobs)


def read_constants(source: str) -> dict[str, Any]:
    """Every UPPERCASE module-level constant of `source` whose value is known: literals (tuples and lists whole) and
    those computed from them (`MODEL_DIM = DEPTH * ASPECT_RATIO`). Pass a read-only file's constants (prepare.py's
    MAX_SEQ_LEN) to `infer_space(..., constants=...)` so constraints can name them."""
    return dict(_parsed(source).constants)


# ---------------------------------------------------------------------------
# Writing


def apply_knobs(source: str, values: dict[str, Any]) -> str:
    """`source` with the given knobs rewritten and every other character unchanged.

    Names are those of read_knobs (`ADAM_BETAS[1]`), a tuple's name with a whole tuple (`ADAM_BETAS`), or an UPPERCASE
    constant assigned an expression (its right-hand side becomes the literal). An unknown name, or a value of the wrong
    type (a float for an int, a number for a string, NaN), raises ProposalRejected."""
    parsed = _parsed(source)
    edits: dict[str, Any] = {}
    for name, value in values.items():
        if name not in parsed.slots and isinstance(value, (tuple, list)) and f"{name}[0]" in parsed.slots:
            size = sum(1 for i in range(len(value) + 1) if f"{name}[{i}]" in parsed.slots)
            if size != len(value):
                raise ProposalRejected(f"{name} has {size} elements, not {len(value)}", reason="bad-value")
            edits.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        elif name in parsed.slots:
            edits[name] = value
        else:
            raise ProposalRejected(f"{name} names no UPPERCASE constant of train.py", reason="unknown-knob")
    changes = []
    for name, value in edits.items():
        s = parsed.slots[name]
        value = _coerce(name, s.value, value)
        if s.value is not _MISSING and value == s.value and type(value) is type(s.value):
            continue
        text = format_value(value, like=s.text)
        if isinstance(value, float) and "*" not in text:
            value = float(text)  # the value as written (0.1 + 0.2 is written, and read back, as 0.3)
        changes.append((s.start, s.end, name, value, text))
    if not changes:
        return source
    changes.sort()
    pieces, pos = [], 0
    for start, end, _, _, text in changes:
        pieces += [source[pos:start], text]
        pos = end
    pieces.append(source[pos:])
    result = "".join(pieces)
    _remember(result, _shifted(parsed, changes))
    return result


def _coerce(name: str, current: Any, value: Any) -> Any:
    """`value` in the type of the knob's current value, or ProposalRejected."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ProposalRejected(f"{name} cannot be set to {value!r}", reason="bad-value")
    if current is _MISSING:
        if isinstance(value, (bool, str)):
            return value
        if _is_number(value):
            return int(value) if _is_int(value) else float(value)
    elif isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, int):
        if _is_number(value) and float(value).is_integer():
            return int(value)
    elif isinstance(current, float):
        if _is_number(value):
            return float(value)
    raise ProposalRejected(f"{name} holds {type(current).__name__} values, not {value!r}", reason="bad-value")


def _shifted(parsed: _Parsed, changes: list) -> _Parsed:
    """The parse of the text apply_knobs just wrote, from the old parse: spans moved, values replaced."""
    changed = {name: (value, text) for _, _, name, value, text in changes}
    slots: dict[str, _Slot] = {}
    shift, i = 0, 0
    for name, s in sorted(parsed.slots.items(), key=lambda item: item[1].start):
        while i < len(changes) and changes[i][0] < s.start:
            shift += len(changes[i][4]) - (changes[i][1] - changes[i][0])
            i += 1
        if name in changed:
            value, text = changed[name]
            slots[name] = _Slot(s.start + shift, s.start + shift + len(text), value, text)
        else:
            slots[name] = _Slot(s.start + shift, s.end + shift, s.value, s.text)
    knobs, literals, derived = dict(parsed.knobs), dict(parsed.literals), parsed.derived
    for name, (value, _) in changed.items():
        knobs[name] = value
        base, index = _split_element(name)
        if index is None:
            literals[name] = value
            if any(n == name for n, _ in derived):
                derived = tuple((n, e) for n, e in derived if n != name)
        else:
            elems = list(literals[base])
            elems[index] = value
            literals[base] = tuple(elems)
    return _Parsed(slots, knobs, literals, derived, _evaluate_derived(literals, derived))


def format_value(value: Any, like: str | None = None) -> str:
    """How `value` is written into source. `like` is the text it replaces: its style (a power of two, scientific
    notation, quote character, digit underscores) is kept where the new value allows."""
    like = (like or "").strip()
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        text = repr(value)
        quote = like[-1:] if like[-1:] in ("'", '"') else ""
        if quote == '"' and text[0] == "'" and '"' not in value and "'" not in value:
            text = '"' + text[1:-1] + '"'
        return text
    if isinstance(value, int):
        m = _POW2_TEXT.match(like)
        if m and value >= 1 and value & (value - 1) == 0:
            return f"{m.group(1)}{value.bit_length() - 1}"
        if "_" in like and "*" not in like and "e" not in like.lower():
            return f"{value:_}"
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProposalRejected(f"{value!r} cannot be written as a Python literal", reason="bad-value")
        m = _POW2_TEXT.match(like)
        if m and value > 0 and math.frexp(value)[0] == 0.5:
            return f"{m.group(1)}{math.frexp(value)[1] - 1}"
        scientific = "e" in like.lower() and not like.lower().startswith("0x") and not 0.1 <= abs(value) < 1e4
        return _short_float(value, scientific=scientific)
    raise ProposalRejected(f"{value!r} is not a number, string or bool", reason="bad-value")


def _short_float(value: float, scientific: bool = False) -> str:
    """The shortest text that is `value` to 12 significant digits, as a float literal (`0.3`, `2.0`, `1e-5`)."""
    if value == 0:
        return "0.0"
    text = repr(value)
    if len(text) > 12:  # repr is the shortest exact text; only long ones can be arithmetic noise
        for digits in range(1, 18):
            text = f"{value:.{digits}g}"
            if abs(float(text) - value) <= 1e-12 * abs(value):
                break
    if scientific or "e" in text:
        for digits in range(0, 17):
            text = f"{value:.{digits}e}"
            if abs(float(text) - value) <= 1e-12 * abs(value):
                break
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    return text if "." in text else text + ".0"


def _round_sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}") if x else 0.0


# ---------------------------------------------------------------------------
# The space


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
        names = _override_targets(key, parsed, all_constants)
        if not isinstance(spec, dict):
            raise ConfigError(f"knobs.{key} must be a table such as {{ low = 0.01, high = 0.1 }}", key=f"knobs.{key}")
        unknown = sorted(set(spec) - set(_OVERRIDE_KEYS))
        if unknown:
            raise ConfigError(f"knobs.{key} has unknown setting {unknown[0]!r}; valid settings are "
                              f"{', '.join(_OVERRIDE_KEYS)}", key=f"knobs.{key}")
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

