"""The GPT research template (fleetlab/templates/gpt) and `adopt`.

Real code paths only: prepare.py runs as the project's setup would run it, train.py trains on CPU, the climbmix
download talks HTTP to a server this test starts on 127.0.0.1.
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import importlib.util
import io
import math
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("tiktoken")
pytest.importorskip("rustbpe")

import torch.nn.functional as F  # noqa: E402

from fleetlab.adopt import adopt  # noqa: E402
from fleetlab.errors import FleetlabError  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[1] / "fleetlab" / "templates" / "gpt"


def run_env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", FLEETLAB_CACHE=str(cache), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def prepare_cmd(*args: str) -> list[str]:
    return [sys.executable, str(TEMPLATE / "prepare.py"), *args]


@pytest.fixture(scope="module")
def prepare_module():
    spec = importlib.util.spec_from_file_location("fleetlab_gpt_prepare", TEMPLATE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def offline_caches(tmp_path_factory):
    """The offline corpus (its first 8 MB) prepared twice, into two separate caches, with a small BPE vocabulary."""
    caches = [tmp_path_factory.mktemp(f"offline-{name}") for name in ("a", "b")]
    cmd = prepare_cmd("--source", "offline", "--vocab-size", "512", "--max-mb", "8")
    procs = [subprocess.Popen(cmd, env=run_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cache in caches]
    for proc in procs:  # two at once: one core each
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        assert "Tokenizer: 512 tokens" in out
    return caches


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def summary(log: str) -> dict[str, float]:
    assert "\n---\n" in log, log[-3000:]
    tail = log.split("\n---\n")[-1]
    return {k: float(v) for k, v in re.findall(r"^(\w+):\s+(\S+)$", tail, re.MULTILINE)}


# ---------------------------------------------------------------------------
# Data preparation
# ---------------------------------------------------------------------------


def test_offline_corpus_is_byte_identical_across_two_prepares(offline_caches):
    a, b = (tree_bytes(c) for c in offline_caches)
    assert {"manifest.json", "tokenizer.pkl", "data/val.parquet", "data/train_00000.parquet"} <= set(a)
    stores = {name.split("/")[0] for name in a if name.startswith("tokens-")}
    assert len(stores) == 1
    store = stores.pop()
    assert {f"{store}/{split}.{ext}" for split in ("train", "val") for ext in ("bin", "idx.npy")} <= set(a)
    assert a == b
    manifest = __import__("json").loads(a["manifest.json"])
    assert manifest["source"] == "offline" and manifest["val"] == ["val.parquet"]
    for name, digest in manifest["sha256"].items():  # content hashes are the files' real hashes
        assert hashlib.sha256(a[f"data/{name}"]).hexdigest() == digest
    val = pq.read_table(io.BytesIO(a["data/val.parquet"])).column("text").to_pylist()
    train = pq.read_table(io.BytesIO(a["data/train_00000.parquet"])).column("text").to_pylist()
    assert len(val) > 20 and len(train) > 10 * len(val)
    assert not set(val) & set(train)  # files are pinned to one split, and a document that recurs is kept once
    assert len(train) == len(set(train))


def test_offline_source_takes_the_whole_python_environment(prepare_module):
    named = prepare_module.offline_files()
    names = [name for name, _ in named]
    assert len(names) == len(set(names))
    assert "stdlib/json/decoder.py" in names and "site-packages/torch/nn/modules/linear.py" in names
    assert any(name.endswith(".pyi") for name in names) and any(name.endswith(".h") for name in names)
    assert not any("__pycache__" in name or name.endswith((".so", ".pyc")) for name in names)
    assert prepare_module.offline_max_bytes(0) is None and prepare_module.offline_max_bytes(8) == 8_000_000


class _ShardServer(http.server.BaseHTTPRequestHandler):
    root: Path
    requests: list[str] = []
    failed: set[str] = set()

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        type(self).requests.append(self.path)
        if name not in self.failed:  # the first request for every file fails: the client must retry
            self.failed.add(name)
            self.send_error(503, "try again")
            return
        path = self.root / name
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def shard_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = type("Handler", (_ShardServer,), {"root": served, "requests": [], "failed": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/datasets/climbmix/resolve/main", handler
    server.shutdown()
    server.server_close()


def test_climbmix_download_against_a_local_server(tmp_path, shard_server, prepare_module, monkeypatch):
    served, url, handler = shard_server
    train_docs = [f"Training document {i}: the quick brown fox jumps over the lazy dog." for i in range(200)]
    val_docs = [f"Validation document {i} is pinned to the last shard." for i in range(50)]
    pq.write_table(pa.table({"text": train_docs}), served / "shard_00000.parquet")
    pq.write_table(pa.table({"text": val_docs}), served / "shard_06542.parquet")
    cache = tmp_path / "cache"
    out = subprocess.run(prepare_cmd("--source", "climbmix", "--num-shards", "1", "--vocab-size", "byte"),
                         env=run_env(cache, FLEETLAB_DATA_URL=url), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Attempt 1/5 failed" in out.stdout  # the 503 was retried
    for name in ("shard_00000.parquet", "shard_06542.parquet"):
        assert (cache / "data" / name).read_bytes() == (served / name).read_bytes()
        assert handler.requests.count(f"/datasets/climbmix/resolve/main/{name}") == 2
    assert not list((cache / "data").glob("*.tmp"))
    manifest = __import__("json").loads((cache / "manifest.json").read_text())
    assert manifest["train"] == ["shard_00000.parquet"] and manifest["val"] == ["shard_06542.parquet"]

    # the runtime reads the pinned validation shard for "val" and the other shard for "train"
    tok = prepare_module.Tokenizer.from_directory(cache)
    for split, docs in (("val", val_docs), ("train", train_docs)):
        x, y, _ = next(prepare_module.make_dataloader(tok, 2, 64, split, directory=cache))
        first = tok.decode(x[0, 1:].tolist())
        assert any(d.startswith(first[:40]) for d in docs), (split, first)

    # tinystories: two text files of stories separated by <|endoftext|>, through the same download code
    stories = tmp_path / "stories"
    (served / "TinyStoriesV2-GPT4-train.txt").write_text("<|endoftext|>".join(f"Story {i}." for i in range(30)))
    (served / "TinyStoriesV2-GPT4-valid.txt").write_text("Val one.<|endoftext|>\nVal two.\n")
    monkeypatch.setenv("FLEETLAB_DATA_URL", url)
    prepare_module.prepare_tinystories(stories, retry_delay=0.01)  # in-process: the same code, no second start-up
    assert pq.read_table(stories / "data" / "val.parquet").column("text").to_pylist() == ["Val one.", "Val two."]
    assert pq.read_table(stories / "data" / "train_00000.parquet").column("text").to_pylist()[-1] == "Story 29."

    # a file the server does not have: retried, then reported as a failure, with nothing left behind
    missing = tmp_path / "missing.parquet"
    assert prepare_module.download(f"{url}/nope.parquet", missing, max_attempts=2, retry_delay=0.01) is False
    assert not missing.exists() and not (tmp_path / "missing.parquet.tmp").exists()


# ---------------------------------------------------------------------------
# Runtime: token store, dataloader and the metric
# ---------------------------------------------------------------------------


def _small_corpus(root: Path, prepare_module, n: int = 300) -> list[str]:
    rng = random.Random(1)
    docs = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "é", "日本"]) for _ in range(rng.randint(1, 60)))
            for _ in range(n)]
    prepare_module.write_corpus(root, "test", docs, docs[: n // 10])
    return docs


def test_token_store_round_trips_every_document(tmp_path, prepare_module):
    docs = _small_corpus(tmp_path, prepare_module)
    tok = prepare_module.Tokenizer.byte_level()
    tokens, offsets = prepare_module.load_tokens(tmp_path, tok, "train")
    assert isinstance(tokens, __import__("numpy").memmap) and tokens.dtype.name == "uint16"
    assert len(offsets) == len(docs) + 1 and offsets[0] == 0 and offsets[-1] == len(tokens)
    for i, doc in enumerate(docs):
        piece = tokens[offsets[i]:offsets[i + 1]].tolist()
        assert piece == [tok.get_bos_token_id()] + tok.encode(doc)
        assert tok.decode(piece[1:]) == doc
    # stored once: a second load memory-maps the same files; a changed corpus is tokenised again
    store = prepare_module.token_dir(tmp_path, tok)
    stamp = (store / "train.bin").stat().st_mtime_ns
    assert prepare_module.load_tokens(tmp_path, tok, "train")[1].tolist() == offsets.tolist()
    assert (store / "train.bin").stat().st_mtime_ns == stamp
    prepare_module.write_corpus(tmp_path, "test", docs[:5], docs[:1])
    assert len(prepare_module.load_tokens(tmp_path, tok, "train")[1]) == 6


def test_prefetching_loader_yields_the_synchronous_batches(tmp_path, prepare_module):
    _small_corpus(tmp_path, prepare_module)
    tok = prepare_module.Tokenizer.byte_level()
    total = int(prepare_module.load_tokens(tmp_path, tok, "train")[1][-1])
    sync = prepare_module.make_dataloader(tok, 3, 50, "train", directory=tmp_path, buffer_size=20, prefetch=0)
    ahead = prepare_module.make_dataloader(tok, 3, 50, "train", directory=tmp_path, buffer_size=20, prefetch=2)
    for i in range(1, 400):  # far past one epoch: the stream wraps around identically
        (xs, ys, es), (xa, ya, ea) = next(sync), next(ahead)
        assert torch.equal(xs, xa) and torch.equal(ys, ya) and xs.dtype == torch.long and xs.is_contiguous()
        assert es == ea == pytest.approx(i * 3 * 51 / total)  # epochs: tokens placed in rows / tokens in the split
    assert ea > 1
    ahead.close()  # stops the background thread


def test_validation_rows_do_not_depend_on_the_batch_size(tmp_path, prepare_module):
    import numpy as np

    _small_corpus(tmp_path, prepare_module, n=3000)
    tok = prepare_module.Tokenizer.byte_level()
    first, n = prepare_module.validation_rows(tok, 32, 32 * 40, multiple=1, directory=tmp_path)
    assert n == 40 and first.shape == (40, 33)
    for multiple in (3, 7, 16, 64):
        rows, m = prepare_module.validation_rows(tok, 32, 32 * 40, multiple=multiple, directory=tmp_path)
        assert m == n and len(rows) % multiple == 0 and np.array_equal(rows[:n], first)
    # a request past the split's end is cut where the split runs out, never repeating a document
    rows, n = prepare_module.validation_rows(tok, 32, 32 * 10**6, multiple=8, directory=tmp_path)
    tokens, offsets = prepare_module.load_tokens(tmp_path, tok, "val")
    assert 0 < n < 10**6 and n * 33 <= len(tokens)
    assert np.array_equal(rows[:40], first)


def test_packing_dataloader_rows_start_with_bos_and_hold_no_padding(tmp_path, prepare_module):
    rng = random.Random(0)
    docs = ["".join(rng.choice("abcdefghij ") for _ in range(rng.randint(1, 24))) for _ in range(400)]
    whole_docs = set(docs)
    prepare_module.write_corpus(tmp_path, "test", docs, docs[:20])
    tok = prepare_module.Tokenizer.byte_level()
    bos = tok.get_bos_token_id()
    prefixes = {d[:n] for d in docs for n in range(len(d) + 1)}
    B, T = 4, 32
    loader = prepare_module.make_dataloader(tok, B, T, "train", directory=tmp_path, buffer_size=50)
    whole = 0
    for _ in range(40):
        x, y, _ = next(loader)
        assert x.shape == y.shape == (B, T) and x.dtype == torch.long
        assert (x[:, 0] == bos).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x[:, :1], y], dim=1).tolist():
            assert row[0] == bos
            segments, current = [], None
            for t in row:  # every token belongs to a document that starts with BOS: nothing is filler
                if t == bos:
                    current = []
                    segments.append(current)
                else:
                    assert 0 <= t < 256
                    current.append(t)
            texts = [bytes(seg).decode() for seg in segments]
            assert all(text in prefixes for text in texts), texts
            assert all(text in whole_docs for text in texts[:-1]), texts  # only the row's last document is cropped
            whole += sum(text in whole_docs for text in texts)
    assert whole > 40 * B * 2  # short documents: best fit puts several whole ones in each row


def test_files_source_pins_validation_files_by_path(tmp_path, prepare_module):
    texts = tmp_path / "notes"
    for i in range(60):
        (texts / f"dir{i % 3}").mkdir(parents=True, exist_ok=True)
        (texts / f"dir{i % 3}" / f"note{i}.md").write_text(f"Note {i}.\n\n\nSecond part of note {i}.\n")
    (texts / "binary.md").write_bytes(b"\xff\xfe\x00bad")  # not UTF-8: skipped
    cache = tmp_path / "cache"
    prepare_module.prepare_data(cache, f"files:{texts}/**/*.md")
    val = pq.read_table(cache / "data" / "val.parquet").column("text").to_pylist()
    train = pq.read_table(cache / "data" / "train_00000.parquet").column("text").to_pylist()
    assert len(val) + len(train) == 120 and not set(val) & set(train)
    expected_val = {f"dir{i % 3}/note{i}.md" for i in range(60) if prepare_module.is_val_path(f"dir{i % 3}/note{i}.md")}
    assert {f"Note {i}." for i in range(60) if f"dir{i % 3}/note{i}.md" in expected_val} == {v for v in val if v.startswith("Note")}

    # two files cannot be split by file: documents are pinned instead, at least one of them
    few = tmp_path / "few"
    few.mkdir()
    (few / "a.txt").write_text("\n\n\n".join(f"Paragraph {i} of a." for i in range(5)))
    (few / "b.txt").write_text("Only paragraph of b.")
    prepare_module.prepare_data(tmp_path / "few-cache", f"files:{few}/*.txt")
    val = pq.read_table(tmp_path / "few-cache" / "data" / "val.parquet").column("text").to_pylist()
    train = pq.read_table(tmp_path / "few-cache" / "data" / "train_00000.parquet").column("text").to_pylist()
    assert val and train and sorted(val + train) == sorted([f"Paragraph {i} of a." for i in range(5)] + ["Only paragraph of b."])


def test_local_source_is_read_again_only_when_its_files_change(tmp_path, prepare_module, capsys):
    texts = tmp_path / "notes"
    texts.mkdir()
    for i in range(40):
        (texts / f"n{i}.md").write_text(f"Note {i}.\n\n\nMore about {i}.\n")
    cache, source = tmp_path / "cache", f"files:{texts}/*.md"
    prepare_module.prepare_data(cache, source)
    shard = cache / "data" / "train_00000.parquet"
    stamp = shard.stat().st_mtime_ns
    prepare_module.prepare_data(cache, source)  # every worker runs the setup: the second one reads nothing
    assert "40 files unchanged" in capsys.readouterr().out and shard.stat().st_mtime_ns == stamp
    (texts / "n3.md").write_text("Note 3, rewritten at another length.\n")
    prepare_module.prepare_data(cache, source)
    docs = [d for name in ("train_00000", "val") for d in pq.read_table(cache / "data" / f"{name}.parquet")["text"].to_pylist()]
    assert "Note 3, rewritten at another length." in docs


class _Unigram(torch.nn.Module):
    """A fixed model: the same logits at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, idx, targets, reduction="mean"):
        logits = self.logits.expand(*idx.shape, -1)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def test_evaluate_bpb_matches_a_hand_computed_value(tmp_path, prepare_module, monkeypatch):
    # Rows of capacity T + 1 = 10 pack exactly [BOS h e l l o BOS a b c]: best fit takes the 6-token
    # document, then the 4-token one fills the rest. Targets: h e l l o BOS a b c (8 bytes, one BOS).
    prepare_module.write_corpus(tmp_path, "test", ["unused"] * 10, ["hello", "abc"] * 300)
    monkeypatch.setenv("FLEETLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(prepare_module, "SMALL_SEQ_LEN", 9)
    monkeypatch.setattr(prepare_module, "SMALL_EVAL_TOKENS", 9 * 10)
    tok = prepare_module.Tokenizer.byte_level()
    V, bos = tok.get_vocab_size(), tok.get_bos_token_id()
    assert V == 260
    logits = torch.zeros(V)
    logits[ord("l")] = 2.0
    logits[bos] = 3.0
    logits[ord("z")] = -1.0
    # by hand: log Z with 257 logits of 0, one of 2 (l), one of 3 (BOS), one of -1 (z)
    log_z = math.log(257 + math.exp(2) + math.exp(3) + math.exp(-1))
    nats_per_row = 8 * log_z - 2 * 2.0  # h e l l o a b c; the BOS target is left out
    expected = nats_per_row / (math.log(2) * 8)
    for batch_size in (1, 3, 16):
        got = prepare_module.evaluate_bpb(_Unigram(logits.clone()), tok, batch_size)
        assert got == pytest.approx(expected, rel=1e-6)
    uniform = prepare_module.evaluate_bpb(_Unigram(torch.zeros(V)), tok, 4)
    assert uniform == pytest.approx(math.log2(V), rel=1e-6)


# ---------------------------------------------------------------------------
# train.py: the contract, and learning with time on CPU
# ---------------------------------------------------------------------------

KNOBS = ["ASPECT_RATIO", "DEPTH", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "EMBEDDING_LR",
         "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETAS", "WARMUP_RATIO", "WARMDOWN_RATIO",
         "FINAL_LR_FRAC"]


def test_train_py_constants_are_plain_module_literals():
    source = (TEMPLATE / "train.py").read_text()
    tree = ast.parse(source)
    assigned: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper():
                    assigned.setdefault(t.id, []).append(node)
    values = {}
    lines = source.splitlines()
    for name in KNOBS:
        nodes = assigned.get(name, [])
        assert len(nodes) == 1 and nodes[0] in tree.body, f"{name} must be assigned once, at module level"
        assert "#" in lines[nodes[0].lineno - 1], f"{name} needs a comment"
        values[name] = eval(compile(ast.Expression(nodes[0].value), name, "eval"), {"__builtins__": {}})
    assert re.search(r"^TOTAL_BATCH_SIZE = 2\*\*19\b", source, re.MULTILINE)
    assert values["ADAM_BETAS"] == (0.8, 0.95) and values["DEPTH"] == 8 and values["WINDOW_PATTERN"] == "SSSL"
    # the template's knob constraint holds for the defaults
    toml = (TEMPLATE / "fleetlab.toml").read_text()
    constraint = re.search(r'constraints = \["(.+)"\]', toml).group(1)
    assert eval(constraint, {"__builtins__": {}}, values)


def test_template_toml_loads(tmp_path):
    from fleetlab.project import Project
    for name in ("fleetlab.toml", "train.py", "prepare.py", "program.md"):
        shutil.copy(TEMPLATE / name, tmp_path / name)
    project = Project.load(tmp_path)
    assert project.command == "python train.py" and project.readonly == ("prepare.py",)
    assert project.metric == "val_bpb" and project.goal == "minimize"
    assert project.metric_pattern.search("val_bpb:          0.997900").group(1) == "0.997900"
    assert set(project.extra_patterns) == {"memory_mb", "num_steps"}


def _train(workdir: Path, cache: Path, budget: float) -> subprocess.Popen:
    workdir.mkdir()
    for name in ("train.py", "prepare.py"):
        shutil.copy(TEMPLATE / name, workdir / name)
    env = run_env(cache, FLEETLAB_TIME_BUDGET=str(budget), FLEETLAB_SEED="1")
    return subprocess.Popen([sys.executable, "train.py"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_cpu_training_learns_with_time(tmp_path, offline_caches, prepare_module):
    cache = offline_caches[0]
    short, long = _train(tmp_path / "short", cache, 2), _train(tmp_path / "long", cache, 20)  # two cores, one thread each
    logs = {}
    for name, proc in (("short", short), ("long", long)):
        logs[name], _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, logs[name][-3000:]
    s, l = summary(logs["short"]), summary(logs["long"])
    for result in (s, l):
        assert set(result) >= {"val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                               "total_tokens_M", "num_steps", "num_params_M", "depth", "epochs", "eval_seconds"}
        assert math.isfinite(result["val_bpb"]) and 0 < result["val_bpb"] < 12
        assert 0 < result["epochs"] < 1  # 8 MB of text is not seen twice in 20 s on a CPU
        assert result["training_seconds"] < result["total_seconds"]
    assert l["epochs"] > s["epochs"]
    assert 20 <= l["training_seconds"] < 30 and l["num_steps"] > 2 * s["num_steps"]
    print(f"\nval_bpb after {s['training_seconds']}s: {s['val_bpb']:.4f}; after {l['training_seconds']}s: {l['val_bpb']:.4f}")
    assert l["val_bpb"] < s["val_bpb"] - 0.3, (s["val_bpb"], l["val_bpb"])
    progress = re.findall(r"^fleetlab: step=(\d+) metric=(\S+) elapsed=(\S+)$", logs["long"], re.MULTILINE)
    assert 3 <= len(progress) <= 10  # about every 5 seconds, never every step
    assert all(math.isfinite(float(m)) for _, m, _ in progress)
    assert [int(st) for st, _, _ in progress] == sorted(int(st) for st, _, _ in progress)
    # both runs name the data they measured on: the corpus and the tokenizer of this cache (fleetlab compares only
    # results measured on the same data; the two prepares of `offline_caches` are byte-identical, so they agree)
    fingerprints = {re.findall(r"^fleetlab: data=([0-9a-f]{16})$", log, re.MULTILINE)[-1] for log in logs.values()}
    from fleetlab.collect import DATA_LINE

    assert fingerprints == {DATA_LINE.findall(logs["short"])[-1]}
    fp = prepare_module.data_fingerprint
    assert fingerprints == {fp(cache)} == {fp(offline_caches[1])}


# ---------------------------------------------------------------------------
# adopt
# ---------------------------------------------------------------------------


def _autoresearch_checkout(root: Path) -> None:
    root.mkdir()
    (root / "prepare.py").write_text("MAX_SEQ_LEN = 2048\nTIME_BUDGET = 300\n\ndef evaluate_bpb(model, tokenizer, batch_size):\n    ...\n")
    (root / "train.py").write_text("DEPTH = 8  # layers\nMATRIX_LR = 0.04  # muon\nprint(f\"val_bpb:          {0.99:.6f}\")\n")
    (root / "program.md").write_text("# autoresearch\n")
    (root / "pyproject.toml").write_text('[project]\nname = "autoresearch"\nversion = "0.1.0"\n')
    (root / "README.md").write_text("readme\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/master\n")


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_adopt_writes_a_valid_toml_and_changes_nothing_else(tmp_path):
    from fleetlab.project import Project
    root = tmp_path / "autoresearch"
    _autoresearch_checkout(root)
    before = _hashes(root)
    path = adopt(root)
    assert path == root / "fleetlab.toml"
    after = _hashes(root)
    assert {k: v for k, v in after.items() if k != "fleetlab.toml"} == before
    assert set(after) == set(before) | {"fleetlab.toml"}
    project = Project.load(root)
    assert project.command == "uv run train.py" and project.setup == "uv run prepare.py"
    assert project.editable == ("train.py",) and project.readonly == ("prepare.py",)
    assert project.metric == "val_bpb" and project.goal == "minimize"
    assert project.metric_pattern.search("---\nval_bpb:          0.997900\n").group(1) == "0.997900"
    assert project.extra_patterns["memory_mb"].search("peak_vram_mb:     45060.2").group(1) == "45060.2"

    with pytest.raises(FleetlabError, match="already exists"):  # a second adopt refuses, file unchanged
        adopt(root)
    assert _hashes(root) == after


def test_adopt_refuses_a_directory_that_is_not_an_autoresearch_checkout(tmp_path):
    root = tmp_path / "other"
    _autoresearch_checkout(root)
    (root / "pyproject.toml").unlink()
    with pytest.raises(FleetlabError, match="pyproject.toml") as err:
        adopt(root)
    assert "\n" not in str(err.value)
    assert not (root / "fleetlab.toml").exists()
    (root / "pyproject.toml").write_text("[project]\n")
    (root / "prepare.py").write_text("print('no metric here')\n")
    with pytest.raises(FleetlabError, match="evaluate_bpb"):
        adopt(root)
    assert not (root / "fleetlab.toml").exists()
