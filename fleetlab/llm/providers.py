"""Chat models behind one small interface: Anthropic's Messages API and any OpenAI-compatible Chat Completions endpoint
(OpenAI, vLLM, Ollama, llama.cpp server, OpenRouter), both through their official SDKs, imported lazily.

`Provider.complete(system, messages)` returns a `Reply` (the text and what it cost). Rate limits (429), server errors
(5xx), timeouts and dropped connections are retried here with exponential backoff; everything else, and a retry budget
spent, becomes one FleetlabError sentence. Every call is counted against a `Budget` of dollars (`--max-llm-cost`).
`preflight()` checks the key and that the endpoint answers, cheaply, before any worker is used.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fleetlab.errors import ConfigError, FleetlabError

# provider name -> (default model, environment variable of the key)
PROVIDERS: dict[str, tuple[str, str]] = {
    "anthropic": ("claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
    "openai": ("gpt-4o", "OPENAI_API_KEY"),
}


class LLMError(FleetlabError):
    """The model could not be reached or did not answer usefully; the message says why in one sentence."""


class BudgetSpent(LLMError):
    """`--max-llm-cost` is spent: no more calls are made."""


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    attempts: int = 1


@dataclass
class Budget:
    """Dollars and tokens spent on the model, shared by every agent of a session (thread-safe)."""

    max_usd: float = 0.0  # 0: no limit
    spent_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> None:
        if self.exhausted:
            raise BudgetSpent(f"the LLM budget of ${self.max_usd:g} is spent (${self.spent_usd:.4f} over "
                              f"{self.calls} calls); raise --max-llm-cost to continue")

    @property
    def exhausted(self) -> bool:
        return bool(self.max_usd) and self.spent_usd >= self.max_usd

    def add(self, reply: Reply) -> None:
        with self._lock:
            self.spent_usd += reply.cost_usd
            self.input_tokens += reply.input_tokens
            self.output_tokens += reply.output_tokens
            self.calls += 1

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.spent_usd, 6), "max_usd": self.max_usd}


class Provider:
    """A chat model. Subclasses implement `_call` (one HTTP request) and `_preflight`; retries live here."""

    name = "provider"
    latency_s = 0.0  # simulated answer time on a virtual clock (only the replayed model sets it)

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, temperature: float = 0.7, max_tokens: int = 8192,
                 price_in_per_mtok: float = 0.0, price_out_per_mtok: float = 0.0, budget: Budget | None = None,
                 retries: int = 4, backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        self.model = model
        self.base_url = base_url or None
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.price_in, self.price_out = price_in_per_mtok, price_out_per_mtok
        self.budget = budget or Budget()
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._client: Any = None

    @property
    def where(self) -> str:
        return self.base_url or f"the {self.name} API"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price_in + output_tokens * self.price_out) / 1e6

    def complete(self, system: str, messages: list[dict[str, str]]) -> Reply:
        """One answer to a conversation ([{"role": "user"|"assistant", "content": ...}]), retried on transient errors."""
        self.budget.check()
        last = ""
        for attempt in range(1, self.retries + 2):
            t0 = time.monotonic()
            try:
                text, tin, tout = self._call(system, messages)
            except Exception as e:  # noqa: BLE001 - SDK errors are classified, then wrapped
                transient, why = self._classify(e)
                if not transient:
                    raise LLMError(f"{self.name} model {self.model!r} at {self.where} failed: {why}") from None
                last = why
                if attempt <= self.retries:
                    wait = _retry_after(e)
                    self._sleep(min(60.0, wait if wait is not None else self.backoff_s * 2 ** (attempt - 1)))
                continue
            reply = Reply(text=text, input_tokens=tin, output_tokens=tout, cost_usd=self.cost(tin, tout),
                          seconds=time.monotonic() - t0, attempts=attempt)
            self.budget.add(reply)
            return reply
        raise LLMError(f"{self.name} model {self.model!r} at {self.where} did not answer after "
                       f"{self.retries + 1} tries (last: {last})")

    def preflight(self) -> None:
        """One clear sentence if there is no key or the endpoint does not answer; nothing when all is well."""
        try:
            self._preflight()
        except FleetlabError:
            raise
        except Exception as e:  # noqa: BLE001
            _, why = self._classify(e)
            raise LLMError(f"cannot use the {self.name} model {self.model!r} at {self.where}: {why}") from None

    # -- per SDK ------------------------------------------------------------------------------------------------------
    def _call(self, system: str, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        raise NotImplementedError

    def _preflight(self) -> None:
        raise NotImplementedError

    def _classify(self, e: Exception) -> tuple[bool, str]:
        """(transient?, one-line reason) for an exception of either SDK (they share these class names)."""
        kind = type(e).__name__
        status = getattr(e, "status_code", None)
        if kind in ("APITimeoutError", "ReadTimeout", "TimeoutError"):
            return True, f"timed out after {self.timeout_s:g} s"
        if kind == "APIConnectionError" or isinstance(e, (ConnectionError, OSError)):
            return True, f"could not connect ({_short(e)})"
        if status is not None:
            if status == 429 or status == 408 or status == 529 or status >= 500:
                return True, f"HTTP {status} ({_short(e)})"
            if status in (401, 403):
                return False, f"the API key was refused (HTTP {status})"
            return False, f"HTTP {status} ({_short(e)})"
        return False, f"{kind}: {_short(e)}"


class OpenAIProvider(Provider):
    """Any OpenAI-compatible Chat Completions endpoint (`base_url` e.g. http://localhost:8000/v1 for vLLM)."""

    name = "openai"

    def client(self):
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise ConfigError("the openai provider needs the `openai` package: pip install 'fleetlab[llm]'",
                                  key="llm.provider") from None
            self._client = openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s,
                                         max_retries=0)
        return self._client

    def _call(self, system, messages):
        r = self.client().chat.completions.create(
            model=self.model, messages=[{"role": "system", "content": system}, *messages],
            temperature=self.temperature, max_tokens=self.max_tokens)
        text = (r.choices[0].message.content or "") if r.choices else ""
        u = r.usage
        return text, int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0)

    def _preflight(self):
        self.client().models.list()


class AnthropicProvider(Provider):
    """Anthropic's Messages API (`base_url` for a proxy or a compatible server)."""

    name = "anthropic"

    def client(self):
        if self._client is None:
            try:
                import anthropic
            except ImportError:
                raise ConfigError("the anthropic provider needs the `anthropic` package: pip install 'fleetlab[llm]'",
                                  key="llm.provider") from None
            self._client = anthropic.Anthropic(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s,
                                               max_retries=0)
        return self._client

    def _call(self, system, messages):
        create = self.client().messages.create
        extra = {"temperature": self.temperature} if _accepts(create, "temperature") else {}  # newer SDKs dropped it
        r = create(model=self.model, system=system, messages=messages, max_tokens=self.max_tokens, **extra)
        text = "".join(getattr(b, "text", "") for b in r.content if getattr(b, "type", "") == "text")
        u = r.usage
        return text, int(getattr(u, "input_tokens", 0) or 0), int(getattr(u, "output_tokens", 0) or 0)

    def _preflight(self):
        self.client().models.list(limit=1)


_CLASSES = {"openai": OpenAIProvider, "anthropic": AnthropicProvider}


def make_provider(settings: dict[str, Any] | None = None, *, provider: str | None = None, model: str | None = None,
                  base_url: str | None = None, max_cost: float | None = None, env: dict[str, str] | None = None,
                  **kw: Any) -> Provider:
    """A provider from `[llm]` settings overridden by command-line values. A missing key is a ConfigError sentence."""
    s = dict(settings or {})
    name = (provider or s.get("provider") or "anthropic").lower()
    if name == "replay":
        from fleetlab.llm.replay import ReplayModel

        return ReplayModel(budget=Budget(max_cost if max_cost is not None else float(s.get("max_cost") or 0.0)))
    if name not in _CLASSES:
        from fleetlab.errors import UnknownName

        raise UnknownName("LLM provider", name, list(_CLASSES))
    default_model, default_env = PROVIDERS[name]
    env = os.environ if env is None else env
    key_env = s.get("api_key_env") or default_env
    key = env.get(key_env, "")
    url = base_url or s.get("base_url") or None
    if not key:
        raise ConfigError(f"the {name} LLM provider needs an API key in ${key_env} (or name another variable with "
                          f"`api_key_env` in [llm] of fleetlab.toml)", key="llm.api_key_env")
    budget = Budget(max_cost if max_cost is not None else float(s.get("max_cost") or 0.0))
    return _CLASSES[name](model or s.get("model") or default_model, base_url=url, api_key=key,
                          timeout_s=float(s.get("timeout_s") or 120.0), temperature=float(s.get("temperature", 0.7)),
                          price_in_per_mtok=float(s.get("price_in_per_mtok") or 0.0),
                          price_out_per_mtok=float(s.get("price_out_per_mtok") or 0.0), budget=budget, **kw)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True


def _retry_after(e: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After), if it said."""
    resp = getattr(e, "response", None)
    value = getattr(resp, "headers", {}).get("retry-after") if resp is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _short(e: Exception, n: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= n else text[: n - 3] + "..."


__all__ = ["Provider", "OpenAIProvider", "AnthropicProvider", "Reply", "Budget", "LLMError", "BudgetSpent",
           "make_provider", "PROVIDERS"]
