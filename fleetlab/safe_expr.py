"""Safe expressions for knob constraints and derived constants: arithmetic, comparisons and a few functions over
known names, evaluated with no builtins, with `**`, `<<` and `*` size-checked so no expression can hang or exhaust
the orchestrator."""

from __future__ import annotations

import ast
import functools
import numbers
from typing import Any

from fleetlab.errors import ConfigError

__all__ = ["CONSTRAINT_FUNCS", "EVAL_GLOBALS", "compile_safe", "names_in", "describe", "is_number"]

CONSTRAINT_FUNCS = {"abs": abs, "min": min, "max": max, "round": round, "int": int, "float": float}


def is_number(v: Any) -> bool:
    """A real number that is not a bool (numpy scalars included: optimizers hand them out)."""
    if isinstance(v, (int, float)):
        return not isinstance(v, bool)
    return isinstance(v, numbers.Real) and not isinstance(v, str)


_SAFE_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Name, ast.Load,
               ast.Constant, ast.Subscript, ast.Tuple, ast.List, ast.Call, ast.operator, ast.unaryop, ast.cmpop,
               ast.boolop, ast.Slice)


def compile_safe(expr: str, known: set[str] | None, key: str | None):
    """Compile `expr` for eval with no builtins; only arithmetic, comparisons, names in `known` and the few safe
    functions. With key None, failures raise ValueError (internal use) instead of ConfigError."""

    def fail(why: str):
        if key is None:
            raise ValueError(why)
        raise ConfigError(f"knobs constraint {expr!r} {why}", key=key)

    if not isinstance(expr, str):
        fail("is not a string")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        fail(f"is not a valid Python expression ({e.msg})")
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            fail(f"uses {type(node).__name__}, which constraints may not (only arithmetic, comparisons and names)")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in CONSTRAINT_FUNCS):
            fail(f"calls something other than {', '.join(CONSTRAINT_FUNCS)}")
        if isinstance(node, ast.Name) and known is not None and node.id not in known | CONSTRAINT_FUNCS.keys():
            fail(f"names {node.id}, which is neither a knob nor an UPPERCASE constant of train.py")
    tree = ast.fix_missing_locations(_Guard().visit(tree))
    return compile(tree, "<constraint>", "eval")


def _pow(a, b):
    if is_number(b) and abs(b) > 1024:
        raise ValueError(f"exponent {b} is too large")
    return a ** b


def _lshift(a, b):
    if is_number(b) and b > 1024:
        raise ValueError(f"shift {b} is too large")
    return a << b


def _mul(a, b):
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, tuple, list)) and is_number(n) and n * max(len(seq), 1) > 10**6:
            raise ValueError("repetition is too large")
    return a * b


_GUARDS = {ast.Pow: "_pow", ast.LShift: "_lshift", ast.Mult: "_mul"}
EVAL_GLOBALS = {"__builtins__": {**CONSTRAINT_FUNCS, "_pow": _pow, "_lshift": _lshift, "_mul": _mul}}


class _Guard(ast.NodeTransformer):
    """Routes `**`, `<<` and `*` through size checks, so no expression can hang or exhaust the orchestrator."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = _GUARDS.get(type(node.op))
        if name is None:
            return node
        return ast.copy_location(ast.Call(func=ast.Name(name, ast.Load()), args=[node.left, node.right], keywords=[]),
                                 node)


@functools.lru_cache(maxsize=256)
def names_in(expr: str) -> list[str]:
    return list(dict.fromkeys(n.id for n in ast.walk(ast.parse(expr.strip(), mode="eval")) if isinstance(n, ast.Name)))


def describe(e: Exception) -> str:
    return str(e) or type(e).__name__
