"""Strategies: who proposes what to run. Registered by name as data; unknown names are rejected with the list.

A portfolio splits the fleet between strategies: `--strategy auto,llm` (equal shares) or `auto:3,llm:1`.
"""

from __future__ import annotations

import importlib
from typing import Any

from fleetlab.errors import ConfigError, UnknownName
from fleetlab.strategies._base import Context, Strategy

# name -> "module:Class" (imported lazily: some pull in Optuna or an LLM SDK)
REGISTRY: dict[str, str] = {
    "none": "fleetlab.strategies.simple:NoneStrategy",
    "baseline": "fleetlab.strategies.simple:BaselineStrategy",
    "random": "fleetlab.strategies.simple:RandomStrategy",
    "grid": "fleetlab.strategies.grid:GridStrategy",
    "factorial": "fleetlab.strategies.factorial:FactorialStrategy",
    "optuna": "fleetlab.strategies.optuna:OptunaStrategy",
    "optuna-gp": "fleetlab.strategies.optuna:OptunaGPStrategy",
    "descent": "fleetlab.strategies.descent:DescentStrategy",
    "auto": "fleetlab.strategies.auto:AutoStrategy",
    "llm": "fleetlab.strategies.llm:LLMStrategy",
    "seq-greedy": "fleetlab.bench.reference:SeqGreedy",
    "wave-sync": "fleetlab.bench.reference:WaveSync",
}


def available() -> list[str]:
    """Names whose module is present in this installation."""
    out = []
    for name, target in REGISTRY.items():
        mod = target.split(":")[0]
        if importlib.util.find_spec(mod) is not None:
            out.append(name)
    return out


def _load(name: str):
    target = REGISTRY.get(name)
    if target is None or name not in available():
        raise UnknownName("strategy", name, available())
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def parse_portfolio(spec: str) -> list[tuple[str, float]]:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ConfigError("--strategy is empty", key="strategy")
    out = []
    for p in parts:
        name, _, share = p.partition(":")
        try:
            w = float(share) if share else 1.0
        except ValueError:
            raise ConfigError(f"strategy share {share!r} in {spec!r} is not a number", key="strategy") from None
        if w <= 0:
            raise ConfigError(f"strategy share of {name} must be positive", key="strategy")
        _load(name)  # validate the name early
        out.append((name, w))
    return out


def make_strategy(spec: str, backfill: str | None = None, **kw: Any) -> Strategy:
    """A strategy (or a portfolio) from its command-line spec. Keyword options go to every constructor that takes
    them (seed, project, settings, ...). `backfill` names a strategy asked only for workers that would otherwise
    idle (strategies/backfill.py)."""
    if backfill and backfill != "none":
        from fleetlab.strategies.backfill import Backfill

        return Backfill(make_strategy(spec, **kw), make_strategy(backfill, **kw))
    parts = parse_portfolio(spec)
    if len(parts) == 1:
        return _construct(parts[0][0], kw)
    from fleetlab.strategies.portfolio import Portfolio

    return Portfolio([(_construct(n, kw), w) for n, w in parts])


def _construct(name: str, kw: dict[str, Any]) -> Strategy:
    import inspect

    cls = _load(name)
    if cls.__init__ is object.__init__:
        return cls()
    sig = inspect.signature(cls.__init__)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    args = {k: v for k, v in kw.items() if takes_all or k in sig.parameters}
    return cls(**args)


__all__ = ["Context", "Strategy", "REGISTRY", "available", "make_strategy", "parse_portfolio"]
