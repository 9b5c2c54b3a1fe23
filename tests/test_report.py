"""Reports: progress.png and report.html are produced and well-formed for full, failing, maximizing and empty sessions."""

from __future__ import annotations

import base64
import re
import struct
from html.parser import HTMLParser

import pytest

from fleetlab.experiment import Experiment, State, format_id
from fleetlab.report import summarize, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def exp(n: int, state: State, metric: float | None = None, desc: str = "", role: str = "explore") -> Experiment:
    return Experiment(id=format_id(n), tag="t", description=desc or f"variant {n}", state=state, metric=metric,
                      role=role, hardware="cpu")


def session() -> tuple[list[Experiment], dict[str, str]]:
    """A small minimize session: baseline, discards, three keeps, an off-scale outlier, failures, one pending, one running."""
    exps = [
        exp(1, State.DONE, 0.0650, "baseline", role="baseline"),
        exp(2, State.DONE, 0.0660),
        exp(3, State.DONE, 0.0560, "LEARNING_RATE 0.01 -> 0.03"),
        exp(4, State.CRASH, None, "DEPTH 3 (shape bug)"),
        exp(5, State.DONE, 2.3683, "LEARNING_RATE 1.0 (dead relus)"),
        exp(6, State.NAN, None, "LEARNING_RATE 1e3"),
        exp(7, State.DONE, 0.0490, "LEARNING_RATE 0.1"),
        exp(8, State.TIMEOUT, None, "sleep forever"),
        exp(9, State.DONE, 0.0500),
        exp(10, State.DONE, 0.0479, "INIT_SCALE 0.3 <b>bold</b>"),
        exp(11, State.DONE, 0.0485, "pending validation"),
        exp(12, State.RUNNING),
    ]
    decisions = {"exp-0001": "keep", "exp-0002": "discard", "exp-0003": "keep", "exp-0004": "crash",
                 "exp-0005": "discard", "exp-0006": "crash", "exp-0007": "keep", "exp-0008": "crash",
                 "exp-0009": "discard", "exp-0010": "keep", "exp-0011": "pending"}
    return exps, decisions


class _Balance(HTMLParser):
    """Checks that every non-void tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.img_src = ""

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.img_src = dict(attrs).get("src", "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
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


def check_html(text: str) -> _Balance:
    assert text.startswith("<!DOCTYPE html>")
    parser = _Balance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert parser.img_src.startswith("data:image/png;base64,")
    check_png(base64.b64decode(parser.img_src.split(",", 1)[1]))
    return parser


def test_full_session(tmp_path):
    exps, decisions = session()
    paths = write_report(exps, decisions, tmp_path / "report", "val_loss", "minimize",
                         summary={"gpu_hours": 0.0183, "dollars": 0.04, "experiments_per_hour": 655.2,
                                  "time_to_best_s": 41.0})
    assert set(paths) == {"png", "html"}
    assert paths["png"].name == "progress.png" and paths["html"].name == "report.html"
    check_png(paths["png"].read_bytes())
    text = paths["html"].read_text()
    check_html(text)
    assert "exp-0010" in text and "0.0479" in text  # the best
    assert "exp-0001" in text and "0.065" in text  # the baseline
    assert "gpu hours" in text and "0.0183" in text and "time to best s" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold" not in text  # descriptions are escaped
    assert not list((tmp_path / "report").glob(".*.tmp"))  # written whole, then moved


def test_summary_numbers():
    exps, decisions = session()
    stats = summarize(exps, decisions, "minimize")
    assert stats["experiments"] == 12 and stats["in_flight"] == 1 and stats["finished"] == 11
    assert stats["kept"] == 4 and stats["pending"] == 1 and stats["discarded"] == 3
    assert stats["failed"] == 3 and stats["failures_by_state"] == {"crash": 1, "nan": 1, "timeout": 1}
    assert stats["baseline_id"] == "exp-0001" and stats["baseline"] == pytest.approx(0.065)
    assert stats["best_id"] == "exp-0010" and stats["best"] == pytest.approx(0.0479)
    assert stats["improvement"] == pytest.approx(0.0171)
    assert stats["improvement_pct"] == pytest.approx(100 * 0.0171 / 0.065)


def test_baseline_is_the_mean_of_baseline_replicates():
    exps = [exp(1, State.DONE, 1.0, role="baseline"), exp(2, State.DONE, 1.2, role="baseline"),
            exp(3, State.DONE, 0.9)]
    stats = summarize(exps, {"exp-0003": "keep"}, "minimize")
    assert stats["baseline"] == pytest.approx(1.1) and stats["baseline_n"] == 2
    assert stats["improvement"] == pytest.approx(0.2)


def test_no_crashes(tmp_path):
    exps, decisions = session()
    ok = [e for e in exps if not e.state.is_failure]
    paths = write_report(ok, decisions, tmp_path, "val_loss", "minimize")
    check_png(paths["png"].read_bytes())
    text = paths["html"].read_text()
    check_html(text)
    assert "exp-0010" in text


def test_maximize_and_undecided_experiments(tmp_path):
    exps = [exp(1, State.DONE, 0.90, role="baseline"), exp(2, State.DONE, 0.93, "wider"),
            exp(3, State.DONE, 0.91), exp(4, State.NO_METRIC)]
    paths = write_report(exps, {"exp-0001": "keep", "exp-0002": "keep"}, tmp_path, "accuracy", "maximize")
    text = paths["html"].read_text()
    check_html(text)
    assert "exp-0002" in text and "+3.33%" in text
    stats = summarize(exps, {"exp-0001": "keep", "exp-0002": "keep"}, "maximize")
    assert stats["failed"] == 1 and stats["discarded"] == 1  # undecided: inferred from the state


@pytest.mark.parametrize("case", ["empty", "only_failures", "only_running", "no_keep"])
def test_nothing_to_report_yet(tmp_path, case):
    exps = {
        "empty": [],
        "only_failures": [exp(1, State.CRASH), exp(2, State.TIMEOUT)],
        "only_running": [exp(1, State.RUNNING), exp(2, State.QUEUED)],
        "no_keep": [exp(1, State.DONE, 0.5, role="baseline")],
    }[case]
    paths = write_report(exps, {}, tmp_path / case, "val_bpb", "minimize")
    check_png(paths["png"].read_bytes())
    text = paths["html"].read_text()
    check_html(text)
    assert "No experiment has been kept yet" in text or case == "no_keep" and "no keep yet" in text
    if case == "empty":
        assert "No experiments yet" in text


def test_bad_goal_is_refused(tmp_path):
    with pytest.raises(ValueError, match="goal"):
        write_report([], {}, tmp_path, "val_loss", "lower")


def test_report_is_rewritten_in_place(tmp_path):
    exps, decisions = session()
    first = write_report(exps[:3], decisions, tmp_path, "val_loss", "minimize")
    second = write_report(exps, decisions, tmp_path, "val_loss", "minimize")
    assert first == second
    assert re.search(r"12 experiments", second["html"].read_text())
