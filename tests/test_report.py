"""Facts, reports and results.tsv on real stores: one definition of the baseline, the validated incumbent, the gain
(positive is better for either goal) and the counts; progress.png and report.html well-formed and saying the same."""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleetlab.experiment import Decision, Experiment, State
from fleetlab.facts import compute, rows
from fleetlab.project import Project
from fleetlab.report import plot_points, write_report
from fleetlab.store.sqlite import SQLiteStore
from fleetlab.store.tsv import rows as tsv_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}
T0 = 1_000_000.0


def make(tmp_path: Path, spec: list[tuple], goal: str = "minimize",
         session: bool = True) -> tuple[Project, SQLiteStore]:
    """A real project and store holding `spec`: (state, metric, description, role, code, decision[, observed]) rows,
    one experiment each in that order; `code` names the content hash; a `keep` decision moves the incumbent."""
    d = tmp_path / "proj"
    d.mkdir(parents=True)
    (d / "fleetlab.toml").write_text(
        '[project]\neditable = ["train.py"]\ncommand = "python train.py"\n'
        f'[metric]\nname = "val_loss"\ngoal = "{goal}"\npattern = \'^val_loss:\\s*(\\S+)\'\n')
    (d / "train.py").write_text("print('val_loss: 1.0')\n")
    project = Project.load(d)
    store = SQLiteStore(project.db_path)
    if session:
        store.save_session("t", started_at=T0, updated_at=T0 + 3600, status="finished", stop_reason="done",
                           busy_s=6000.0, available_s=7200.0, cost_usd=4.5, workers=2)
    for i, (state, metric, desc, role, code, decision, *observed) in enumerate(spec):
        e = store.add_experiment(Experiment(id="", tag="t", description=desc, state=State.QUEUED, role=role,
                                            content_hash=code, queued_at=T0 + i))
        if state is not State.QUEUED:
            store.mark_running(e.id, f"w{i % 2}", "cpu", T0 + 10 * i, {})
        for step, x in enumerate(observed[0] if observed else []):
            store.add_observation(e.id, step, x, float(step))
        if state.is_final:
            store.finish(e.id, state, metric=metric, finished_at=T0 + 10 * i + 8,
                         extras={"training_seconds": 6.0, "epochs": 3.0 if "repeats" in desc else 0.5})
        if decision:
            store.add_decision(e.id, Decision(decision), T0 + 10 * i + 9)
            if decision == "keep":
                store.set_incumbent("t", e.id, T0 + 10 * i + 9)
    return project, store


D, CRASH, PRUNED, RUNNING, QUEUED = State.DONE, State.CRASH, State.PRUNED, State.RUNNING, State.QUEUED
SESSION = [
    (D, 0.0650, "baseline", "baseline", "B", "keep"),
    (D, 0.0640, "baseline replicate", "replicate", "B", "discard"),
    (D, 0.0660, "baseline replicate", "replicate", "B", "discard"),
    (D, 0.0700, "LR 0.02", "explore", "x1", "discard"),
    (CRASH, None, "DEPTH 3 (shape bug)", "explore", "x2", "crash"),
    (D, 0.0500, "LR 0.1 <b>bold</b>", "explore", "K", "keep"),           # screening run of the keep
    (D, 0.0560, "validation of exp-0006", "validate", "K", "discard"),
    (D, 0.0540, "validation of exp-0006", "validate", "K", "discard"),
    (PRUNED, None, "HIDDEN 8", "explore", "x3", "discard", [0.09, 0.081]),
    (D, 0.0530, "repeats data", "explore", "x4", "pending"),
    (State.CANCELLED, None, "stopped at the end", "explore", "x5", "discard"),
    (QUEUED, None, "submitted later", "explore", "x6", None),
]


def test_a_maximised_gain_is_said_to_be_better(tmp_path):
    spec = [(D, 0.90, "baseline", "baseline", "B", "keep"), (D, 0.92, "base", "replicate", "B", "discard"),
            (D, 0.95, "wider", "explore", "K", "keep"), (D, 0.94, "val", "validate", "K", "discard"),
            (D, 0.96, "val", "validate", "K", "discard")]
    project, store = make(tmp_path, spec, goal="maximize")
    assert compute(project, store).gain["abs"] == pytest.approx(0.95 - 0.91)
    text = Path(write_report(project, store, tmp_path / "r")["html"]).read_text()
    assert "gain +0.04 (+4.40%" in text


def test_results_tsv_is_autoresearchs(tmp_path):
    project, store = make(tmp_path, SESSION)
    table = tsv_rows(project, store)
    header, body = table[0], {r[0]: dict(zip(table[0], r)) for r in table[1:]}
    assert header[:5] == ["experiment_id", "val_loss", "memory_gb", "status", "description"]
    assert len(body) == 10  # finished only: no queued, running or cancelled rows
    assert {r["status"] for r in body.values()} == {"keep", "discard", "crash"}
    assert [k for k, r in body.items() if r["val_loss"] == "0.000000"] == ["exp-0005"]  # crashes only
    pruned = body["exp-0009"]
    assert (pruned["status"], pruned["state"], pruned["val_loss"]) == ("discard", "pruned", "0.081000")
    # the kept code's own measurement runs are the keep's, and say what they are
    assert [(body[k]["status"], body[k]["role"]) for k in ("exp-0007", "exp-0008")] == [("keep", "validate")] * 2
    assert (body["exp-0002"]["status"], body["exp-0002"]["role"]) == ("keep", "replicate")
    assert (body["exp-0010"]["status"], body["exp-0010"]["decision"]) == ("discard", "pending")


def test_every_run_of_kept_code_is_a_keep_row(tmp_path):
    spec = [(D, 1.0, "baseline", "baseline", "B", "keep"), (D, 0.8, "better", "explore", "K", "keep"),
            (D, 0.81, "the same code again", "explore", "K", "discard"),
            (D, 1.02, "a no-op", "explore", "B", "discard"),
            (D, 0.9, "other", "explore", "O", "discard")]
    project, store = make(tmp_path, spec)
    assert [r[3] for r in tsv_rows(project, store)[1:]] == ["keep", "keep", "keep", "keep", "discard"]
    kinds = [p["kind"] for p in plot_points(rows(store, "t"))]
    assert kinds == ["keep", "keep", "measure", "measure", "discard"]
    assert compute(project, store).counts["by_decision"] == {"baseline": 1, "keep": 1, "discard": 3}


def test_plot_draws_measurements_and_pruned_runs_as_such(tmp_path):
    project, store = make(tmp_path, SESSION)
    kinds = {p["id"]: (p["kind"], p["metric"]) for p in plot_points(rows(store, "t"))}
    assert kinds["exp-0001"][0] == "keep" and kinds["exp-0006"][0] == "keep"
    assert {kinds[k][0] for k in ("exp-0002", "exp-0003", "exp-0007", "exp-0008")} == {"measure"}
    assert kinds["exp-0009"] == ("pruned", pytest.approx(0.081))
    assert kinds["exp-0005"] == ("crash", None) and kinds["exp-0010"][0] == "pending"
    assert "exp-0011" not in kinds and "exp-0012" not in kinds


class _Page(HTMLParser):
    """Checks that every non-void tag is closed in order and collects the data-fact figures."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.img_src = ""
        self.facts: dict[str, str] = {}
        self._fact: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.img_src = a.get("src", "")
        if "data-fact" in a:
            self._fact = a["data-fact"]
            self.facts[self._fact] = ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_data(self, data):
        if self._fact:
            self.facts[self._fact] += data

    def handle_endtag(self, tag):
        self._fact = None
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def check_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    return width, height


def read_page(text: str) -> _Page:
    assert text.startswith("<!DOCTYPE html>")
    page = _Page()
    page.feed(text)
    page.close()
    assert page.errors == [] and page.stack == []
    assert page.img_src.startswith("data:image/png;base64,")
    check_png(base64.b64decode(page.img_src.split(",", 1)[1]))
    return page


def html_facts_agree(page: _Page, facts: dict) -> int:
    """Every figure the page marks with data-fact equals the facts' value (at the digits shown); returns how many."""
    for key, shown in page.facts.items():
        value = facts
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        if value is None:
            assert shown in ("-", "None"), (key, shown)
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            assert shown == str(value), (key, shown, value)
        else:  # a float, written with one of the report's formats
            shown_formats = {format(value, spec) for spec in (".6g", "+.6g", ".4g", ".3g", ".2f", "+.2f", ".3f",
                                                              ".4f")}
            assert shown.rstrip("%") in shown_formats, (key, shown, value)
    return len(page.facts)


def test_report_says_what_the_facts_say(tmp_path):
    project, store = make(tmp_path, SESSION)
    paths = write_report(project, store, tmp_path / "report")
    assert set(paths) == {"png", "html"} and paths["png"].name == "progress.png"
    check_png(paths["png"].read_bytes())
    text = paths["html"].read_text()
    page = read_page(text)
    assert html_facts_agree(page, compute(project, store).to_dict()) >= 25
    assert page.facts["incumbent.mean"] == "0.055" and page.facts["baseline.n"] == "3"
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold" not in text  # descriptions are escaped
    assert "more than once" in text  # the data-repeat warning
    assert not list((tmp_path / "report").glob(".*.tmp"))  # written whole, then moved


@pytest.mark.parametrize("case", ["no_session", "only_failures", "only_queued", "no_keep"])
def test_nothing_to_report_yet(tmp_path, case):
    spec = {
        "no_session": [],
        "only_failures": [(CRASH, None, "baseline", "baseline", "B", "crash"), (State.TIMEOUT, None, "x", "explore",
                                                                                 "x", "crash")],
        "only_queued": [(QUEUED, None, "baseline", "baseline", "B", None)],
        "no_keep": [(D, 0.5, "baseline", "baseline", "B", "keep"), (D, 0.6, "worse", "explore", "x", "discard")],
    }[case]
    project, store = make(tmp_path, spec, session=case != "no_session")
    f = compute(project, store)
    paths = write_report(project, store, tmp_path / case)
    page = read_page(paths["html"].read_text())
    html_facts_agree(page, f.to_dict())
    if case == "no_keep":
        assert f.gain == {"abs": 0.0, "pct": 0.0, "ci": None} and f.incumbent["is_baseline"]
        assert f.counts["by_decision"] == {"baseline": 1, "discard": 1}
    else:
        assert f.baseline is None and f.gain is None


def test_report_is_rewritten_in_place(tmp_path):
    project, store = make(tmp_path, SESSION[:3])
    first = write_report(project, store, tmp_path / "r")
    for i, row in enumerate(SESSION[3:6]):
        e = store.add_experiment(Experiment(id="", tag="t", description=row[2], state=State.QUEUED,
                                            content_hash=row[4], queued_at=T0 + 100 + i))
        store.mark_running(e.id, "w0", "cpu", T0 + 100 + i, {})
        store.finish(e.id, row[0], metric=row[1], finished_at=T0 + 101 + i)
    second = write_report(project, store, tmp_path / "r")
    assert first == second
    assert read_page(second["html"].read_text()).facts["experiments"] == "6"
