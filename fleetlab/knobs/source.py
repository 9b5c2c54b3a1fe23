"""Reading and rewriting the UPPERCASE module-level constants of an editable file.

`read_knobs(source)` returns the literal constants of a train.py; `apply_knobs(source, values)` rewrites some of them
and leaves every other byte alone (comments, blank lines, spacing, quote style).

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

Speed: the source is parsed with the standard `ast` module once per distinct text (an LRU cache keyed by the text) into
the character spans of every knob's value; `apply_knobs` splices new literals into those spans (tens of microseconds)
and registers the result in the same cache, so reading back a text it wrote never parses again. libcst was measured
and not used: on the 536-line gpt template it takes ~210 ms to parse and ~45 ms to print, `ast` ~12-25 ms, and
splicing needs no printing at all.
"""

from __future__ import annotations

import ast
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fleetlab.errors import ProposalRejected
from fleetlab.knobs.space import _MISSING, _is_int, _split_element
from fleetlab.safe_expr import EVAL_GLOBALS as _EVAL_GLOBALS
from fleetlab.safe_expr import compile_safe as _compile_safe
from fleetlab.safe_expr import is_number as _is_number

_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_POW2_TEXT = re.compile(r"^(\s*2\s*\*\*\s*)(\(?\s*-?\s*\d+\s*\)?)\s*$")


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



def read_knobs(source: str) -> dict[str, Any]:
    """The knobs of `source` in file order: {"MATRIX_LR": 0.04, "ADAM_BETAS[0]": 0.8, "WINDOW_PATTERN": "SSSL", ...}.

    Raises ProposalRejected if the source is not valid Python. Cached by text: repeated reads cost a dict copy."""
    return dict(_parsed(source).knobs)


def read_constants(source: str) -> dict[str, Any]:
    """Every UPPERCASE module-level constant of `source` whose value is known: literals (tuples and lists whole) and
    those computed from them (`MODEL_DIM = DEPTH * ASPECT_RATIO`). Pass a read-only file's constants (prepare.py's
    MAX_SEQ_LEN) to `infer_space(..., constants=...)` so constraints can name them."""
    return dict(_parsed(source).constants)




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


