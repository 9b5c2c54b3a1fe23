"""The LLM researcher against local OpenAI- and Anthropic-compatible servers (tests/llm_servers.py) speaking the real
wire protocol through the official SDKs: valid proposals run and are recorded, invalid ones are refused with their
reasons and returned to the model once, transient errors are retried, nothing outside the snapshot changes, the
fleet keeps running. Plus the bounded prompt (sizes at 10, 100 and 1,000 experiments) and the replayed model on the
simulated fleet (utilization of 16 workers)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from conftest import fleetlab_cmd, set_budget
from fleetlab.errors import ConfigError, FleetlabError
from fleetlab.experiment import Experiment, State
from llm_servers import ScriptedLLMServer, answer, knob_edit

pytest.importorskip("openai")
pytest.importorskip("anthropic")

LR = knob_edit("LEARNING_RATE = 0.01", "LEARNING_RATE = 0.02", "LEARNING_RATE 0.01 -> 0.02")
MOM = knob_edit("MOMENTUM = 0.9", "MOMENTUM = 0.8", "MOMENTUM 0.9 -> 0.8")
HID = knob_edit("HIDDEN = 64", "HIDDEN = 96", "HIDDEN 64 -> 96")
BAD = [knob_edit("SEED", "SEED", "edit prepare.py", file="prepare.py"),
       knob_edit("x = 1", "x = 2", "write outside", file="../outside.py"),
       knob_edit("NOT_IN_FILE = 3", "NOT_IN_FILE = 4", "missing search"),
       knob_edit("    return", "    return  ", "ambiguous search"),
       knob_edit("DEPTH = 1", "DEPTH = = 1", "syntax error")]
REASONS = ["read-only", "outside the project", "does not occur", "it must occur exactly once", "does not compile"]


def tree_hash(root: Path) -> str:
    """Every file of the project except fleetlab's own state (runs, database, results.tsv, git)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_dir() or rel.parts[0] in (".fleetlab", ".git", "results.tsv") or "__pycache__" in rel.parts:
            continue
        h.update(str(rel).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def fast_mlp(mlp_project: Path) -> Path:
    set_budget(mlp_project, 1, 30)
    with open(mlp_project / "fleetlab.toml", "a") as f:
        f.write('\n[llm]\ntimeout_s = 1.5\nprice_in_per_mtok = 3.0\nprice_out_per_mtok = 15.0\n')
    return mlp_project


def _summary(stdout: str) -> dict:
    """The JSON summary `fleetlab run --json` prints after its progress lines (the session's facts)."""
    start = stdout.find("{\n") if stdout.startswith("{") else stdout.rfind("\n{\n") + 1
    return json.loads(stdout[start:])


def _context(project, store, experiments=(), incumbent=None, workers=()):
    from fleetlab.api import knob_space
    from fleetlab.ledger import StoreView
    from fleetlab.proposals import Materializer
    from fleetlab.strategies._base import Context

    return Context(goal=project.goal, metric=project.metric, incumbent=incumbent, baseline_knobs={},
                   space=knob_space(project), experiments=list(experiments), workers=list(workers),
                   view=StoreView(store, project.goal), materializer=Materializer(project, store))


# == the research loop through the real CLI ==========================================================================
def test_openai_run_valid_and_invalid_proposals_errors_and_slow_answers(fast_mlp: Path, tmp_path: Path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("outside the project\n")
    before, sentinel_before = tree_hash(fast_mlp), sentinel.read_bytes()
    script = [answer(LR, *BAD, notes=["the learning rate looks like the lever"]),  # 1 valid, 5 invalid
              {"delay": 3.0, "text": answer(HID)},        # slower than timeout_s = 1.5: retried
              {"status": 429}, {"status": 500},           # retried with backoff
              "I think we should try a larger learning rate!",  # malformed: asked again
              answer(MOM, LR, fence=True),                # fenced; LR again is a duplicate
              answer(HID)]
    with ScriptedLLMServer("openai", script) as srv:
        t0 = time.time()
        r = fleetlab_cmd("run", "-C", str(fast_mlp), "--fleet", "local:2", "--strategy", "llm", "--llm-provider",
                         "openai", "--llm-base-url", srv.base_url, "--llm-model", "test-model", "--max-experiments",
                         "4", "--keep-rule", "simple", "--json", env={"OPENAI_API_KEY": "sk-test"}, timeout=240)
        elapsed = time.time() - t0
        assert r.returncode == 0, r.stderr + r.stdout
        reqs = srv.model_requests
    summary = _summary(r.stdout)
    assert summary["experiments"] == 4 and summary["counts"]["by_state"] == {"done": 4}, summary
    res = json.loads(fleetlab_cmd("results", "-C", str(fast_mlp), "--json", check=True).stdout)
    descs = {e["description"]: e for e in res}
    for d in ("LEARNING_RATE 0.01 -> 0.02", "MOMENTUM 0.9 -> 0.8", "HIDDEN 64 -> 96"):
        assert descs[d]["state"] == "done" and descs[d]["strategy"] == "llm" and descs[d]["metric"] is not None
    assert len({e["content_hash"] for e in res}) == 4  # nothing ran twice
    # the five invalid proposals went back to the model once, each with its reason
    feedback = [m["content"] for q in reqs for m in q["body"]["messages"] if m["role"] == "user"
                and m["content"].startswith("These proposals were rejected")]
    assert feedback and all(reason in feedback[0] for reason in REASONS), feedback
    assert any("could not be read" in m["content"] for q in reqs for m in q["body"]["messages"])
    assert reqs[0]["body"]["model"] == "test-model" and reqs[0]["body"]["messages"][0]["role"] == "system"
    # the note reached the shared notepad under the agent's name
    notes = json.loads(fleetlab_cmd("notes", "list", "-C", str(fast_mlp), "--json", check=True).stdout)
    assert [(n["author"], n["text"]) for n in notes] == [("llm", "the learning rate looks like the lever")]
    # nothing outside the snapshots changed
    assert tree_hash(fast_mlp) == before and sentinel.read_bytes() == sentinel_before
    assert not (fast_mlp.parent / "outside.py").exists() and not (tmp_path / "outside.py").exists()
    for run in (fast_mlp / ".fleetlab" / "runs").iterdir():
        assert (run / "prepare.py").read_bytes() == (fast_mlp / "prepare.py").read_bytes()
    print(f"openai run: {len(reqs)} model requests, {elapsed:.1f} s")


def test_anthropic_run_with_server_error(fast_mlp: Path):
    script = [{"status": 500}, answer(LR, notes=["anthropic was here"]), answer(MOM)]
    with ScriptedLLMServer("anthropic", script, model="claude-test") as srv:
        r = fleetlab_cmd("run", "-C", str(fast_mlp), "--fleet", "local:2", "--strategy", "llm", "--llm-provider",
                         "anthropic", "--llm-base-url", srv.base_url, "--llm-model", "claude-test",
                         "--max-experiments", "3", "--keep-rule", "simple", "--json",
                         env={"ANTHROPIC_API_KEY": "sk-ant-test"}, timeout=240)
        assert r.returncode == 0, r.stderr + r.stdout
        reqs = srv.model_requests
    assert _summary(r.stdout)["counts"]["by_state"] == {"done": 3}
    assert reqs[0]["body"]["system"].startswith("You are an autonomous ML researcher")
    assert reqs[0]["body"]["model"] == "claude-test" and reqs[0]["body"]["max_tokens"] > 0
    res = json.loads(fleetlab_cmd("results", "-C", str(fast_mlp), "--json", check=True).stdout)
    assert {"LEARNING_RATE 0.01 -> 0.02", "MOMENTUM 0.9 -> 0.8"} <= {e["description"] for e in res}


@pytest.mark.parametrize("case", ["no_key", "unreachable"])
def test_missing_key_or_dead_endpoint_is_one_sentence_before_any_run(fast_mlp: Path, case: str):
    env = {"OPENAI_API_KEY": "" if case == "no_key" else "sk-test"}
    r = fleetlab_cmd("run", "-C", str(fast_mlp), "--fleet", "local:2", "--strategy", "llm", "--llm-provider",
                     "openai", "--llm-base-url", "http://127.0.0.1:9/v1", "--max-experiments", "2", env=env)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ("OPENAI_API_KEY" in err) if case == "no_key" else ("could not connect" in err and "127.0.0.1:9" in err)
    assert not (fast_mlp / ".fleetlab" / "runs").exists()  # no worker was used


# == the strategy in-process ===========================================================================================
def _strategy(project, srv, **kw):
    from fleetlab.strategies.llm import LLMStrategy

    os.environ.setdefault("OPENAI_API_KEY", "sk-test")
    return LLMStrategy(project=project, llm_provider=srv.kind, llm_base_url=srv.base_url, llm_model="m", **kw)


def test_agents_share_the_fleet_deduplicated_and_see_each_others_queue(fast_mlp: Path, monkeypatch):
    from fleetlab.project import Project
    from fleetlab.store.sqlite import SQLiteStore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    project, store = Project.load(fast_mlp), SQLiteStore(":memory:")
    queued = Experiment(id="exp-0007", tag="t", description="WEIGHT_DECAY 1e-4 -> 1e-3", state=State.QUEUED,
                        strategy="llm", meta={"agent": "llm-1"}, content_hash="abc")
    # both agents answer the same two proposals: two run, the copies are refused as duplicates
    with ScriptedLLMServer("openai", [answer(LR, MOM), answer(LR, MOM)]) as srv:
        s = _strategy(project, srv, agents=2)
        out = s.propose(_context(project, store, [queued]), 4)
        reqs = srv.model_requests
    assert sorted(p.description for p in out) == ["LEARNING_RATE 0.01 -> 0.02", "MOMENTUM 0.9 -> 0.8"]
    assert {p.meta["agent"] for p in out} <= {"llm-1", "llm-2"}
    firsts = [q["body"]["messages"][1]["content"] for q in reqs if len(q["body"]["messages"]) == 2]
    assert len(firsts) == 2 and any("You are llm-1" in f for f in firsts) and any("You are llm-2" in f for f in firsts)
    assert all("exp-0007 queued by llm-1: WEIGHT_DECAY" in f for f in firsts)
    dup = [m["content"] for q in reqs for m in q["body"]["messages"] if "same content hash" in m["content"]]
    assert dup, "the duplicate went back to its agent"


def test_budget_counts_tokens_and_dollars_and_stops(fast_mlp: Path, monkeypatch):
    from fleetlab.project import Project
    from fleetlab.store.sqlite import SQLiteStore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    project, store = Project.load(fast_mlp), SQLiteStore(":memory:")
    with ScriptedLLMServer("openai", [answer(LR), answer(MOM)]) as srv:
        s = _strategy(project, srv, max_llm_cost=0.001)
        assert [p.description for p in s.propose(_context(project, store), 1)] == ["LEARNING_RATE 0.01 -> 0.02"]
        b = s.provider.budget
        assert b.calls == 1 and b.input_tokens > 1000 and b.output_tokens > 10 and b.spent_usd > 0.001
        assert s.propose(_context(project, store), 1) == [] and s.finished
        assert len(srv.model_requests) == 1  # no call past the budget


def test_repeated_failures_end_in_one_sentence(fast_mlp: Path, monkeypatch):
    from fleetlab.project import Project
    from fleetlab.store.sqlite import SQLiteStore
    from fleetlab.strategies import llm

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    project, store = Project.load(fast_mlp), SQLiteStore(":memory:")
    with ScriptedLLMServer("openai", [], default="still not json") as srv:
        s = _strategy(project, srv)
        monkeypatch.setattr(llm.time, "sleep", lambda s: None)
        for _ in range(llm.FAILED_CALLS_TO_STOP - 1):
            assert s.propose(_context(project, store), 1) == []
        with pytest.raises(FleetlabError, match="could not be read"):
            s.propose(_context(project, store), 1)


def test_parse_answer_forms():
    from fleetlab.strategies.llm import MalformedAnswer, parse_answer

    obj = {"proposals": [], "notes": ["n"]}
    assert parse_answer(json.dumps(obj)) == obj
    assert parse_answer("Sure:\n```json\n" + json.dumps(obj) + "\n```\nDone.") == obj
    assert parse_answer("prefix " + json.dumps(obj) + " suffix") == obj
    for bad in ("", "no json here", "[1, 2]", '{"proposals": 3}'):
        with pytest.raises(MalformedAnswer):
            parse_answer(bad)


def test_missing_key_names_the_variable(fast_mlp):
    from fleetlab.llm.providers import make_provider

    with pytest.raises(ConfigError, match=r"\$MY_KEY"):
        make_provider({"provider": "openai", "api_key_env": "MY_KEY"}, env={})
    assert make_provider({"provider": "anthropic"}, env={"ANTHROPIC_API_KEY": "k"}).model


# == bounded context ===================================================================================================
def _fake_history(project, store, n: int) -> list[Experiment]:
    """n finished experiments (a tenth failed, with long logs), 16 running, 30 queued, 40 notes."""
    rng_hw = ["H100", "H200"]
    exps = []
    for i in range(1, n + 1):
        failed = i % 10 == 0
        exps.append(Experiment(
            id=f"exp-{i:04d}", tag="t", state=State.CRASH if failed else State.DONE, strategy="llm",
            description=f"experiment {i}: LEARNING_RATE -> {0.01 + i * 1e-5:.5f} and a long explanation " * 2,
            role="baseline" if i == 1 else "explore", metric=None if failed else 0.1 + (i * 7919 % 1000) / 1e4,
            knobs={"LEARNING_RATE": 0.01 + i * 1e-5, "HIDDEN": 32 * (1 + i % 4)}, hardware=rng_hw[i % 2],
            content_hash=f"h{i}", log_tail="\n".join(f"log line {k} " + "x" * 150 for k in range(40)) if failed else "",
            meta={"agent": "llm", "reason": "exit code 1"} if failed else {"agent": "llm"}))
    for i in range(n + 1, n + 47):
        exps.append(Experiment(id=f"exp-{i:04d}", tag="t", state=State.RUNNING if i <= n + 16 else State.QUEUED,
                               description=f"pending {i}", strategy="llm", content_hash=f"h{i}"))
    for k in range(40):
        store.add_note("llm", f"note {k}: " + "an observation " * 30, time.time())
    return exps


def test_prompt_size_is_bounded(fast_mlp: Path, capsys):
    from fleetlab.llm.prompt import measure_prompt
    from fleetlab.project import Project
    from fleetlab.store.sqlite import SQLiteStore

    project = Project.load(fast_mlp)
    sizes = {}
    for n in (10, 100, 1000):
        store = SQLiteStore(":memory:")
        exps = _fake_history(project, store, n)
        ctx = _context(project, store, exps, incumbent=exps[1])
        sizes[n] = measure_prompt(project, ctx, project.read_editable())
    with capsys.disabled():
        print("\nprompt size (chars / ~tokens): " + ", ".join(
            f"{n} experiments: {s['chars']} / {s['approx_tokens']}" for n, s in sizes.items()))
    assert sizes[1000]["chars"] <= sizes[100]["chars"] * 1.05
    assert sizes[1000]["chars"] < 40_000


# == the simulated fleet ===============================================================================================
HOURS = 3  # simulated hours (8 h, the original's session, gives 0.972; see the closing note)


def test_replayed_model_keeps_16_simulated_workers_busy(tmp_path: Path, capsys):
    pytest.importorskip("fleetlab.fleet.sim")
    pytest.importorskip("fleetlab.bench.autoresearch")
    from fleetlab.api import open_project
    from fleetlab.session import RunOptions, run_session
    from fleetlab.templates import write_template

    root = write_template("gpt", tmp_path / "gpt")
    set_budget(root, 300, 600)
    opened = open_project(root)
    try:
        t0 = time.time()
        # full-length runs, as the original's: with early stopping (the default) runs end 2.5x as often and a model
        # answering once a minute, not the lookahead, bounds utilization (0.86 here, for 2.5x the experiments)
        s = run_session(opened, RunOptions(fleet="sim:16xH100", strategy="llm", max_hours=HOURS, keep_rule="simple",
                                           never_stop=True, prune=False, strategy_options={"llm_provider": "replay"}))
        wall = time.time() - t0
    finally:
        opened.close()
    with capsys.disabled():
        print(f"\nsim:16xH100, replayed model answering in 60 s: {s.experiments} experiments in {HOURS} h, "
              f"utilization {s.utilization:.3f}, best {s.best_metric} (baseline {s.baseline_metric}), {wall:.1f} s wall")
    assert s.utilization >= 0.95
    assert s.experiments > 16 * HOURS * 3600 / 300 * 0.9
