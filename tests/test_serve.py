"""`fleetlab serve` and `fleetlab run --serve` over a real session's store: the API returns what the CLI prints, writes
need the token, bad requests are refused in one sentence with nothing written, and a variant submitted over HTTP from
another process and directory runs and is recorded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import fleetlab_cmd, set_budget

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

TOKEN = "test-token-0123456789"
TAG = "t1"


def make_session(root: Path, n: int = 4) -> Path:
    """A short real mlp session on local:2 (tag t1) whose store the server reads."""
    from fleetlab.templates import write_template

    proj = write_template("mlp", root / "proj")
    set_budget(proj, 1.0, timeout=30)
    fleetlab_cmd("run", "-C", str(proj), "--fleet", "local:2", "--strategy", "random", "--max-experiments", str(n),
                 "--keep-rule", "simple", "--no-prune", "--tag", TAG, "-q", timeout=120, check=True)
    return proj


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: object = None, token: str | None = None, raw: bytes | None = None) -> tuple[int, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get_content_type() == "application/json" else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "the server exited"
        with contextlib.suppress(OSError):
            if http(url + "api/version")[0] == 200:
                return
        time.sleep(0.2)
    raise AssertionError("the server did not answer")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # by its own pid
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving_session(proj: Path):
    """`fleetlab run --serve` with no strategy: it runs what is submitted and serves the dashboard beside it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fleetlab.cli", "run", "-C", str(proj), "--fleet", "local:2",
                             "--strategy", "none", "--keep-rule", "simple", "--no-prune", "--tag", TAG, "-q",
                             "--serve", "--serve-port", str(port), "--serve-token", TOKEN],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_up(url, proc)
        yield url
    finally:
        _stop(proc)


def cli_json(proj: Path, *args: str):
    return json.loads(fleetlab_cmd(*args, "-C", str(proj), "--json", check=True).stdout)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    return make_session(tmp_path_factory.mktemp("serve"))


def test_serve_reads_what_the_cli_prints_and_guards_writes(session: Path, tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-m", "fleetlab.cli", "serve", "-C", str(session), "--port", "0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("dashboard: http://127.0.0.1:") and "token for writes: " in banner, banner
        url = banner.split()[1]
        token = banner.rsplit("token for writes: ", 1)[1].rstrip(")\n")
        _wait_up(url, proc)

        # the finished session's figures do not move: the API's objects are the CLI's, key for key
        assert http(url + "api/status")[1] == cli_json(session, "status")
        results = cli_json(session, "results")
        assert http(url + "api/experiments")[1] == results
        explore = next(r for r in results if r["role"] == "explore")
        code, detail = http(url + f"api/experiments/{explore['id']}")
        shown = cli_json(session, "show", explore["id"])
        assert code == 200 and {k: detail[k] for k in shown} == shown
        assert detail["lineage"][0]["id"] == explore["parent"] and detail["arm"][0]["id"] == explore["id"]
        diff = fleetlab_cmd("show", explore["id"], "--diff", "-C", str(session), check=True).stdout
        assert http(url + f"api/experiments/{explore['id']}/diff")[1]["diff"] + "\n" == diff
        log = fleetlab_cmd("show", explore["id"], "--log", "-C", str(session), check=True).stdout
        assert http(url + f"api/experiments/{explore['id']}/log")[1] + "\n" == log
        assert "val_loss:" in log
        assert http(url + "api/analysis")[1] == cli_json(session, "analyze")  # noise, hardware and knob effects
        code, err = http(url + "api/experiments/exp-9999")
        assert code == 404 and err["error"].count(".") <= 1 and "exp-9999" in err["error"]
        for page in ("", "static/app.js", "static/plotly.min.js"):  # the page works offline: plotly is served here
            assert http(url + page)[0] == 200

        # writes: no token 401, a wrong one 403, the right one is written; a bad one writes nothing
        note = {"text": "the dashboard can write", "author": "tester"}
        assert http(url + "api/notes", note)[0] == 401
        assert http(url + "api/notes", note, token="not-the-token")[0] == 403
        code, body = http(url + "api/notes", {"text": "  "}, token=token)
        assert code == 400 and "text" in body["error"]
        code, body = http(url + "api/notes", {**note, "experiment": "exp-9999"}, token=token)
        assert code == 404
        code, body = http(url + "api/notes", note, token=token)
        assert code == 201
        notes = cli_json(session, "notes", "list")
        assert [(n["author"], n["text"]) for n in notes] == [("tester", "the dashboard can write")]
        assert http(url + "api/notes")[1] == notes
    finally:
        _stop(proc)


def test_serve_refuses_bad_addresses_in_one_sentence(session: Path):
    for args, words in ((["--host", "0.0.0.0"], "needs --token"), (["--port", "70000"], "not a TCP port"),
                        (["--token", "short"], "at least 8")):
        r = fleetlab_cmd("serve", "-C", str(session), *args, timeout=60)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = fleetlab_cmd("serve", "-C", str(session), "--port", str(taken.getsockname()[1]), timeout=60)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr


CLIENT = r"""
import json, sys, urllib.error, urllib.request
url, token, train = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()

def post(body, token=None, raw=None):
    req = urllib.request.Request(url + "api/submit", data=raw if raw is not None else json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return [r.status, json.loads(r.read())]
    except urllib.error.HTTPError as e:
        return [e.code, json.loads(e.read())]

good = {"description": "LEARNING_RATE 0.01 -> 0.02 over HTTP",
        "files": {"train.py": train.replace("LEARNING_RATE = 0.01", "LEARNING_RATE = 0.02")}, "agent": "far-away"}
out = {
    "no_token": post(good),
    "not_json": post(None, token, raw=b"{description: 1"),
    "no_files": post({"description": "x"}, token),
    "readonly": post({"description": "x", "files": {"train.py": train, "prepare.py": "print(1)"}}, token),
    "escape": post({"description": "x", "files": {"../outside.py": "print(1)"}}, token),
    "new_file": post({"description": "x", "files": {"train.py": train, "extra.py": "print(1)"}}, token),
    "replicates": post({**good, "replicates": "two"}, token),
    "unknown": post({**good, "priority": 1}, token),
    "no_parent": post({**good, "parent": "exp-9999"}, token),
    "good": post(good, token),
}
print(json.dumps(out))
"""


def test_submit_over_http_from_another_process_and_directory(session: Path, tmp_path: Path):
    elsewhere = tmp_path / "agent-machine"
    elsewhere.mkdir()
    train = elsewhere / "train.py"
    train.write_text((session / "train.py").read_text())  # the agent's own copy
    before = cli_json(session, "results")
    with serving_session(session) as url:
        r = subprocess.run([sys.executable, "-c", CLIENT, url, TOKEN, str(train)], cwd=elsewhere, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["no_token"][0] == 401
        for name in ("not_json", "no_files", "readonly", "escape", "new_file", "replicates", "unknown"):
            code, body = out[name]
            assert code == 400 and body["error"] and "Traceback" not in body["error"], (name, out[name])
        assert "prepare.py" in out["readonly"][1]["error"] and "extra.py" in out["new_file"][1]["error"]
        assert out["no_parent"][0] == 404
        assert out["good"][0] == 201 and len(out["good"][1]["ids"]) == 1
        new_id = out["good"][1]["ids"][0]
        deadline = time.time() + 90
        while time.time() < deadline:  # the serving session runs it
            rec = http(url + f"api/experiments/{new_id}")[1]
            if rec["state"] not in ("queued", "running"):
                break
            time.sleep(0.3)
    after = cli_json(session, "results")
    assert [e["id"] for e in after] == [e["id"] for e in before] + [new_id]  # the refused ones wrote nothing
    mine = after[-1]
    assert mine["state"] == "done" and mine["metric"] is not None and mine["status"] in ("keep", "discard")
    assert mine["strategy"] == "manual" and mine["knobs"]["LEARNING_RATE"] == 0.02
    assert cli_json(session, "show", new_id)["meta"]["agent"] == "far-away"
    assert not (elsewhere / "outside.py").exists() and not (session.parent / "outside.py").exists()
    assert not list((session / ".fleetlab").glob("submit-*"))  # no scratch copy left behind
    assert "LEARNING_RATE = 0.01" in (session / "train.py").read_text()  # the project itself is untouched
