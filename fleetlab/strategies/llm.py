"""`--strategy llm`: LLM researchers propose edits to the editable files; the fleet runs them.

Each call builds a bounded prompt (fleetlab.llm.prompt), asks the model for proposals in the JSON wire contract,
validates every proposal the way the scheduler will (Materializer.build: editable paths only, each search text exactly
once, compiles; and not a variant already tried, by content hash) and returns each rejected proposal to the model once
with the reason. Malformed answers are asked again with the parse error; 429/5xx/timeouts are retried with backoff in
the provider. The model's `notes` go into the shared notepad under the agent's name.

`--agents K` runs K researchers, each with its own conversation, over one store and one fleet: a request for n
proposals is split between them and asked concurrently; every agent sees what is queued and running and who queued it,
and their proposals are de-duplicated against each other before they reach the queue.

The scheduler calls `propose` in a background thread on the real clock (`threaded`), so workers keep running while the
model thinks; on a virtual clock (the simulated fleet) the answer arrives `latency_s` later. Because a call takes
time, the strategy asks for more than the free slots (`lookahead_hint`: the workers expected to free up during one
call) so that no worker waits on the model.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleetlab.errors import ConfigError, FleetlabError, ProposalRejected
from fleetlab.experiment import Edit, Note, Proposal
from fleetlab.llm import prompt as prompts
from fleetlab.llm.providers import BudgetSpent, LLMError, Provider, make_provider
from fleetlab.strategies._base import Context, Strategy

MALFORMED_RETRIES = 2     # a malformed answer is asked again this many times (with the parse error)
FAILED_CALLS_TO_STOP = 3  # consecutive calls without an answer end the session with the last error


class MalformedAnswer(ValueError):
    """The model's answer is not the JSON object of the wire contract."""


def parse_answer(text: str) -> dict[str, Any]:
    """The JSON object of an answer: plain, or inside a ```json fence; MalformedAnswer with the reason otherwise."""
    text = (text or "").strip()
    if not text:
        raise MalformedAnswer("the answer was empty")
    fence = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.S)
    candidates = [fence.group(1)] if fence else []
    candidates.append(text)
    if "{" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    err = ""
    for c in candidates:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError as e:
            err = f"{e.msg} at line {e.lineno} column {e.colno}"
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("proposals", []), list):
            raise MalformedAnswer('the answer must be a JSON object with a "proposals" list')
        return obj
    raise MalformedAnswer(f"the answer is not valid JSON ({err})")


def to_proposal(d: Any, parent: str | None, agent: str) -> Proposal:
    """A Proposal from one entry of the "proposals" list; ProposalRejected when its shape is wrong."""
    if not isinstance(d, dict):
        raise ProposalRejected("a proposal must be a JSON object", reason="malformed")
    edits = d.get("edits")
    if not isinstance(edits, list) or not edits:
        raise ProposalRejected('a proposal needs a non-empty "edits" list', reason="malformed")
    out = []
    for ed in edits:
        if not isinstance(ed, dict) or not isinstance(ed.get("file"), str):
            raise ProposalRejected('every edit needs a "file"', reason="malformed")
        fields = {k: ed.get(k) for k in ("search", "replace", "content")}
        if any(v is not None and not isinstance(v, str) for v in fields.values()):
            raise ProposalRejected("search, replace and content must be strings", reason="malformed")
        if fields["content"] is None and (fields["search"] is None or fields["replace"] is None):
            raise ProposalRejected(f"the edit of {ed['file']} needs either content, or search and replace",
                                   reason="malformed")
        out.append(Edit(file=ed["file"], **fields))
    desc = " ".join(str(d.get("description") or "").split())[:200] or "(no description)"
    return Proposal(description=desc, hypothesis=str(d.get("hypothesis") or "")[:500], edits=tuple(out),
                    parent=parent, strategy="llm", meta={"agent": agent})


class _Agent:
    """One researcher: a name, its conversation of the current call, and what was rejected lately."""

    def __init__(self, name: str):
        self.name = name
        self.rejections: deque[str] = deque(maxlen=prompts.OWN)
        self.calls = 0
        self.last_prompt_chars = 0


class LLMStrategy(Strategy):
    name = "llm"
    threaded = True

    def __init__(self, seed: int = 0, project=None, settings: dict[str, Any] | None = None,
                 llm_provider: str | None = None, llm_model: str | None = None, llm_base_url: str | None = None,
                 max_llm_cost: float | None = None, agents: int | None = None, provider: Provider | None = None,
                 preflight: bool = True, proposals_per_call: int | None = None):
        if project is None:
            raise ConfigError("the llm strategy needs a project", key="strategy")
        self.project = project
        s = dict((settings or project.settings).get("llm", {}))
        self.provider = provider or make_provider(s, provider=llm_provider, model=llm_model, base_url=llm_base_url,
                                                  max_cost=max_llm_cost)
        k = int(agents if agents is not None else s.get("agents") or 1)
        if k < 1:
            raise ConfigError("--agents must be at least 1", key="agents")
        self.agents = [_Agent("llm" if k == 1 else f"llm-{i + 1}") for i in range(k)]
        self.per_call = max(1, int(proposals_per_call or s.get("proposals_per_call") or 4))
        self.latency_s = float(getattr(self.provider, "latency_s", 0.0) or 0.0)
        self.seed = seed
        self._done = False
        self._failures = 0
        self._empty = 0
        self._last_error = ""
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._notes: list[Note] = []  # taken from answers; the loop records them (`notes`)
        self._call_s: deque[float] = deque(maxlen=8)
        self._hint = 0
        self.prompt_chars: list[int] = []
        self.prompt_log: list[tuple[int, int]] = []  # (finished experiments, prompt characters) per call
        if preflight:
            self.provider.preflight()  # a missing key or a dead endpoint is one sentence, before any worker starts

    # -- Strategy ------------------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._done

    @property
    def lookahead_hint(self) -> int:
        """Proposals to keep queued beyond the free workers: the runs expected to end during one model call."""
        return self._hint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "provider": self.provider.name, "model": self.provider.model,
                "agents": len(self.agents), "llm": self.provider.budget.as_dict(),
                "prompt_chars_last": self.prompt_chars[-1] if self.prompt_chars else 0}

    def rejected(self, proposal: Proposal, reason: str) -> None:
        """The scheduler refused a proposal (e.g. a duplicate that slipped through): tell its agent next time."""
        agent = next((a for a in self.agents if a.name == proposal.meta.get("agent")), self.agents[0])
        agent.rejections.append(f"{proposal.description}: {reason}")

    def propose(self, context: Context, n: int) -> list[Proposal]:
        if self._done or n <= 0:
            return []
        if self.provider.budget.exhausted:
            self._done = True
            return []
        if self._empty and not self.latency_s:  # the last calls brought nothing: do not hammer the endpoint
            time.sleep(min(30.0, 0.5 * 2 ** (self._empty - 1)))
        self._update_hint(context)
        total = max(n, min(self.per_call, n + self._hint))
        shares = _split(total, len(self.agents))
        self._claimed = {e.content_hash for e in context.experiments if e.content_hash}
        t0 = time.monotonic()
        jobs = [(a, k) for a, k in zip(self.agents, shares) if k > 0]
        if len(jobs) == 1:
            results = [self._ask_safely(jobs[0][0], context, jobs[0][1])]
        else:
            with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="llm-agent") as pool:
                results = list(pool.map(lambda j: self._ask_safely(j[0], context, j[1]), jobs))
        self._call_s.append(time.monotonic() - t0)
        out = [p for props, _ in results if props for p in props]
        self._empty = 0 if out else self._empty + 1
        errors = [err for _, err in results if err is not None]
        if isinstance(next(iter(errors), None), BudgetSpent):
            self._done = True
        if errors and not out:
            self._failures += 1
            self._last_error = str(errors[0])
            if self._failures >= FAILED_CALLS_TO_STOP and not self._done:
                raise LLMError(f"{FAILED_CALLS_TO_STOP} calls in a row got no answer: {self._last_error}")
        else:
            self._failures = 0
        return out

    # -- one agent, one call -------------------------------------------------------------------------------------------
    def _ask_safely(self, agent: _Agent, context: Context, k: int) -> tuple[list[Proposal], Exception | None]:
        try:
            return self._ask(agent, context, k), None
        except FleetlabError as e:
            return [], e

    def _ask(self, agent: _Agent, context: Context, k: int) -> list[Proposal]:
        mat = context.materializer
        if mat is None:
            raise ConfigError("the llm strategy proposes inside a session (its context has no materializer)",
                              key="strategy")
        parent = context.incumbent
        files = mat.files_of(parent)
        if hasattr(self.provider, "space"):
            self.provider.space = context.space  # the replayed model samples knob values from the search space
        system = prompts.system_prompt(self.project)
        user = prompts.user_prompt(self.project, context, files, k, agent=agent.name, rejections=agent.rejections,
                                   agents=len(self.agents))
        agent.calls += 1
        agent.last_prompt_chars = len(system) + len(user)
        with self._lock:
            self.prompt_chars.append(agent.last_prompt_chars)
            self.prompt_log.append((len(context.finished), agent.last_prompt_chars))
        messages = [{"role": "user", "content": user}]
        answer = self._answer(system, messages)
        self._take_notes(answer, agent)
        accepted, rejected = self._validate(answer, mat, parent, agent)
        if rejected:  # returned to the model once, with the reasons
            messages.append({"role": "user", "content": _feedback(rejected)})
            try:
                again = self._answer(system, messages)
            except LLMError as e:
                if isinstance(e, BudgetSpent):
                    raise
                again = {"proposals": []}
            self._take_notes(again, agent)
            ok, still = self._validate(again, mat, parent, agent)
            accepted += ok
            for desc, reason in still:
                agent.rejections.append(f"{desc}: {reason}")
        return accepted

    def _answer(self, system: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Ask, parse; a malformed answer is asked again (with the reason) after a short backoff."""
        for attempt in range(MALFORMED_RETRIES + 1):
            reply = self.provider.complete(system, messages)
            messages.append({"role": "assistant", "content": reply.text[:20000] or "(empty)"})
            try:
                return parse_answer(reply.text)
            except MalformedAnswer as e:
                if attempt == MALFORMED_RETRIES:
                    raise LLMError(f"the model's answer could not be read {MALFORMED_RETRIES + 1} times: {e}") \
                        from None
                messages.append({"role": "user", "content": f"Your answer could not be read: {e}. Answer again "
                                 "with only the JSON object described in the instructions."})
                if not self.latency_s:  # real clock: back off a little before asking again
                    time.sleep(min(4.0, 0.25 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _validate(self, answer: dict[str, Any], mat, parent, agent: _Agent
                  ) -> tuple[list[Proposal], list[tuple[str, str]]]:
        ok: list[Proposal] = []
        bad: list[tuple[str, str]] = []
        base = mat.files_of(parent)
        for d in answer.get("proposals") or []:
            desc = str(d.get("description", "?"))[:120] if isinstance(d, dict) else "?"
            try:
                prop = to_proposal(d, parent.id if parent is not None else None, agent.name)
                variant = mat.build(prop, parent)
                if variant.files == base:
                    raise ProposalRejected("the edits change nothing", reason="no_change")
                with self._lock:
                    if variant.content_hash in self._claimed:
                        raise ProposalRejected("this variant was already tried, or is queued (same content hash)",
                                               reason="duplicate")
                    self._claimed.add(variant.content_hash)
            except ProposalRejected as e:
                bad.append((desc, str(e)))
                continue
            ok.append(prop)
        return ok, bad

    def _take_notes(self, answer: dict[str, Any], agent: _Agent) -> None:
        notes = answer.get("notes") or []
        if not isinstance(notes, list):
            return
        with self._lock:
            for text in notes[:5]:
                if isinstance(text, str) and text.strip():
                    self._notes.append(Note(agent.name, " ".join(text.split())[:1000]))

    def notes(self) -> list[Note]:
        with self._lock:
            out, self._notes = self._notes, []
        return out

    def _update_hint(self, context: Context) -> None:
        """Workers expected to free up while one call is answered: ceil(workers * call time / run time)."""
        call = self.latency_s or (max(self._call_s) if self._call_s else 0.0)
        runs = [e.runtime_s for e in context.finished[-20:] if e.runtime_s]
        run_s = (sorted(runs)[len(runs) // 2] if runs else float(self.project.time_budget_s)) or 1.0
        self._hint = math.ceil(len(context.workers) * call / run_s) + 1 if call else 1


def _split(total: int, k: int) -> list[int]:
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def _feedback(rejected: list[tuple[str, str]]) -> str:
    lines = ["These proposals were rejected and will not run:"]
    lines += [f"- {desc}: {reason}" for desc, reason in rejected]
    lines.append("Send corrected versions (or different experiments) in the same JSON format; the search text must "
                 "be copied exactly from the incumbent's file shown above.")
    return "\n".join(lines)


__all__ = ["LLMStrategy", "parse_answer", "to_proposal", "MalformedAnswer"]
