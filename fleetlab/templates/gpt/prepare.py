"""
One-time data preparation for the GPT research template, and the fixed runtime pieces train.py imports
(tokenizer, packing dataloader, evaluate_bpb). READ-ONLY for experiments: the evaluation lives here.

Usage (the project's `setup` step, run once per worker, never per experiment):
    python prepare.py --source offline                 # no network: text already on this machine (Python stdlib)
    python prepare.py --source climbmix --num-shards 8 # the original's data (parquet shards from the HF hub)
    python prepare.py --source tinystories
    python prepare.py --source 'files:notes/**/*.md'   # your own text
    python prepare.py --source offline --vocab-size byte   # byte-level tokenizer, no BPE training

Data and tokenizer go to $FLEETLAB_CACHE, else ~/.cache/fleetlab/gpt/<source>-<vocab>; runs find the last
prepared directory through ~/.cache/fleetlab/gpt/last_prepared unless FLEETLAB_CACHE says where it is.
"""

import argparse
import contextlib
import glob
import hashlib
import itertools
import json
import math
import os
import pickle
import sys
import sysconfig
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 2048          # context length on a GPU (the original's)
TIME_BUDGET = 300           # default training budget on a GPU, seconds (FLEETLAB_TIME_BUDGET overrides)
EVAL_TOKENS = 40 * 524288   # validation tokens on a GPU

SMALL_SEQ_LEN = 256         # context length on CPU / Apple MPS
SMALL_TIME_BUDGET = 60      # default training budget on CPU / MPS, seconds
SMALL_EVAL_TOKENS = 2**15   # validation tokens on CPU / MPS

VOCAB_SIZE = 8192           # default BPE vocabulary, special tokens included
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
# GPT-4 style split pattern with \p{N}{1,2} instead of {1,3}
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

CACHE_ROOT = Path.home() / ".cache" / "fleetlab" / "gpt"
HF = "https://huggingface.co/datasets"
BASE_URLS = {  # FLEETLAB_DATA_URL replaces the base URL (a mirror, or a local server in tests)
    "climbmix": f"{HF}/karpathy/climbmix-400b-shuffle/resolve/main",
    "tinystories": f"{HF}/roneneldan/TinyStories/resolve/main",
}
CLIMBMIX_MAX_SHARD = 6542                 # the last shard is shard_06542.parquet
CLIMBMIX_VAL_SHARD = CLIMBMIX_MAX_SHARD   # pinned validation shard
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"}
VAL_EVERY = 20              # local sources: a file is validation when sha256(path) % VAL_EVERY == 0 (pinned by name)
DOCS_PER_SHARD = 50_000

# ---------------------------------------------------------------------------
# Where the prepared data lives
# ---------------------------------------------------------------------------


def vocab_tag(vocab_size):
    return "byte" if vocab_size == "byte" else str(vocab_size)


def default_cache_dir(source, vocab_size):
    name = source
    if source.startswith("files:"):
        name = "files-" + hashlib.sha256(source.encode()).hexdigest()[:10]
    return CACHE_ROOT / f"{name}-{vocab_tag(vocab_size)}"


def cache_dir():
    """The prepared directory a run reads: $FLEETLAB_CACHE, else the one `prepare.py` wrote last on this machine."""
    if os.environ.get("FLEETLAB_CACHE"):
        return Path(os.environ["FLEETLAB_CACHE"]).expanduser()
    pointer = CACHE_ROOT / "last_prepared"
    if pointer.exists():
        return Path(pointer.read_text().strip())
    sys.exit("No prepared data found: run `python prepare.py --source offline` (the project's setup) first.")


# ---------------------------------------------------------------------------
# Writing a corpus: parquet shards with a `text` column plus a content-hashed manifest
# ---------------------------------------------------------------------------


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_parquet(path, docs):
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), tmp, row_group_size=1024, compression="zstd")
    os.replace(tmp, path)


def write_corpus(directory, source, train_docs, val_docs):
    """Write documents as data/train_NNNNN.parquet + data/val.parquet and a manifest; deterministic bytes."""
    directory = Path(directory)
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = {"train": [], "val": ["val.parquet"]}
    train_docs = iter(train_docs)  # any iterable: a large source streams through in shards
    while True:
        chunk = list(itertools.islice(train_docs, DOCS_PER_SHARD))
        if not chunk and files["train"]:
            break
        path = data / f"train_{len(files['train']):05d}.parquet"
        _write_parquet(path, chunk)
        files["train"].append(path.name)
        if len(chunk) < DOCS_PER_SHARD:
            break
    _write_parquet(data / "val.parquet", list(val_docs))
    write_manifest(directory, source, files)


def write_manifest(directory, source, files):
    directory = Path(directory)
    shards = {name: sha256_file(directory / "data" / name) for split in files for name in files[split]}
    corpus = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(shards.items())).encode()).hexdigest()
    manifest = {"source": source, "train": files["train"], "val": files["val"], "sha256": shards, "corpus_sha256": corpus}
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, directory / "manifest.json")
    print(f"Data: {len(files['train'])} train shard(s) + pinned validation {files['val']}, corpus sha256 {corpus[:16]}")


def read_manifest(directory):
    path = Path(directory) / "manifest.json"
    if not path.exists():
        sys.exit(f"No prepared data in {directory}: run `python prepare.py` (the project's setup) first.")
    return json.loads(path.read_text())


def data_fingerprint(directory=None):
    """What a run measures on, in 16 hex digits: the corpus (the manifest's content hash) and the tokenizer file.
    train.py prints it as `fleetlab: data=<fingerprint>`; fleetlab compares only results measured on the same data
    (a worker whose Python has another standard library builds another offline corpus, and would not match)."""
    directory = cache_dir() if directory is None else Path(directory)
    tok = directory / "tokenizer.pkl"
    parts = [read_manifest(directory)["corpus_sha256"], sha256_file(tok) if tok.exists() else "no-tokenizer-file"]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def split_documents(text, max_chars=4000):
    """Local text files become documents at double blank lines (PEP 8's gap between top-level definitions);
    longer pieces are cut at single blank lines so little is lost when packing crops a document."""
    docs = []
    for block in text.split("\n\n\n"):
        piece = ""
        for para in block.split("\n\n"):
            if piece and len(piece) + len(para) > max_chars:
                docs.append(piece)
                piece = ""
            piece = f"{piece}\n\n{para}" if piece else para
        docs.append(piece)
    return [d.strip("\n") for d in docs if d.strip()]


def _digest(key):
    return int(hashlib.sha256(key.encode()).hexdigest(), 16)


def is_val_path(rel):
    return _digest(rel) % VAL_EVERY == 0


def local_corpus(directory, source, paths, root):
    """Turn files (sorted by relative path, undecodable ones skipped) into a train/val corpus. Validation is pinned by
    file path; with too few files for that, by (path, document number)."""
    rels = sorted((Path(os.path.relpath(os.path.abspath(p), root)).as_posix(), Path(p)) for p in paths)
    files = []
    for rel, path in rels:
        try:
            files.append((rel, split_documents(path.read_text(encoding="utf-8"))))
        except (UnicodeDecodeError, OSError):
            continue
    split = {True: [], False: []}
    for rel, docs in files:
        split[is_val_path(rel)].extend(docs)
    if not split[True] or not split[False]:  # few files: pin documents instead (at least one)
        keyed = [(f"{rel}#{i}", doc) for rel, docs in files for i, doc in enumerate(docs)]
        pinned = {key for key, _ in keyed if is_val_path(key)} or {min((k for k, _ in keyed), key=_digest, default="")}
        split = {True: [d for k, d in keyed if k in pinned], False: [d for k, d in keyed if k not in pinned]}
    train, val = split[False], split[True]
    if not train or not val:
        sys.exit(f"Data: {len(files)} readable file(s) hold too little text for a train/validation split.")
    print(f"Data: {len(files)} files -> {len(train):,} train / {len(val):,} validation documents")
    write_corpus(directory, source, train, val)


def offline_files():
    """The Python standard library's own .py files (tests and site-packages left out): text every machine has."""
    root = Path(os.path.abspath(sysconfig.get_paths()["stdlib"]))
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]  # prune: site-packages can be far larger than the stdlib
        paths += [Path(folder) / f for f in files if f.endswith(".py")]
    return paths, root


def download(url, path, max_attempts=5, retry_delay=1.0):
    """Download url to path (atomically) with retries and exponential back-off; shows progress. Returns success."""
    import requests

    path = Path(path)
    if path.exists():
        return True
    for attempt in range(1, max_attempts + 1):
        tmp = path.with_name(path.name + ".tmp")
        try:
            with requests.get(url, stream=True, timeout=30) as response:
                response.raise_for_status()
                total = int(response.headers.get("content-length") or 0)
                done, shown = 0, 0.0
                with open(tmp, "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        done += len(chunk)
                        if time.time() - shown > 5:
                            shown = time.time()
                            of = f" of {total / 1e6:.1f}" if total else ""
                            print(f"  {path.name}: {done / 1e6:.1f}{of} MB", flush=True)
            os.replace(tmp, path)
            print(f"  Downloaded {path.name} ({done / 1e6:.1f} MB)", flush=True)
            return True
        except (requests.RequestException, OSError) as e:
            print(f"  Attempt {attempt}/{max_attempts} failed for {path.name}: {e}", flush=True)
            tmp.unlink(missing_ok=True)
            if attempt < max_attempts:
                time.sleep(retry_delay * 2 ** (attempt - 1))
    return False


def prepare_climbmix(directory, num_shards, workers=8, retry_delay=1.0):
    from concurrent.futures import ThreadPoolExecutor

    base = os.environ.get("FLEETLAB_DATA_URL", BASE_URLS["climbmix"]).rstrip("/")
    data = Path(directory) / "data"
    data.mkdir(parents=True, exist_ok=True)
    names = [f"shard_{i:05d}.parquet" for i in range(min(num_shards, CLIMBMIX_MAX_SHARD))]
    val = f"shard_{CLIMBMIX_VAL_SHARD:05d}.parquet"
    todo = names + [val]
    print(f"Data: {sum(not (data / n).exists() for n in todo)} of {len(todo)} shards to download from {base}")
    with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
        ok = list(pool.map(lambda n: download(f"{base}/{n}", data / n, retry_delay=retry_delay), todo))
    if not all(ok):
        sys.exit(f"Data: {ok.count(False)} shard(s) failed to download from {base}.")
    write_manifest(directory, "climbmix", {"train": names, "val": [val]})


def prepare_tinystories(directory, retry_delay=1.0):
    base = os.environ.get("FLEETLAB_DATA_URL", BASE_URLS["tinystories"]).rstrip("/")
    raw = Path(directory) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in TINYSTORIES_FILES.values():
        if not download(f"{base}/{name}", raw / name, retry_delay=retry_delay):
            sys.exit(f"Data: could not download {name} from {base}.")
    write_corpus(directory, "tinystories", _stories(raw / TINYSTORIES_FILES["train"]), _stories(raw / TINYSTORIES_FILES["val"]))


def _stories(path, separator="<|endoftext|>"):
    """Stream the stories of a TinyStories text file (separated by <|endoftext|>)."""
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            while separator in line:
                head, line = line.split(separator, 1)
                story = "".join(lines + [head]).strip()
                lines = []
                if story:
                    yield story
            lines.append(line)
    story = "".join(lines).strip()
    if story:
        yield story


def prepare_data(directory, source, num_shards=10, retry_delay=1.0):
    if source == "offline":
        paths, root = offline_files()
        local_corpus(directory, source, paths, root)
    elif source.startswith("files:"):
        pattern = source[len("files:"):]
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not paths:
            sys.exit(f"Data: no files match {pattern!r}.")
        root = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
        root = root.parent if root.is_file() else root
        local_corpus(directory, source, paths, root)
    elif source == "climbmix":
        prepare_climbmix(directory, num_shards, retry_delay=retry_delay)
    elif source == "tinystories":
        prepare_tinystories(directory, retry_delay=retry_delay)
    else:
        sys.exit(f"Unknown source {source!r}; valid sources are: climbmix, files:GLOB, offline, tinystories.")


# ---------------------------------------------------------------------------
# Documents and tokenizer training
# ---------------------------------------------------------------------------


def iter_documents(directory, split, batch_size=128):
    """Yield (list of document texts, epoch) forever, from the manifest's shards for `split`, in order."""
    manifest = read_manifest(directory)
    paths = [Path(directory) / "data" / name for name in manifest[split]]
    epoch = 1
    while True:
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(texts), batch_size):
                    yield texts[i:i + batch_size], epoch
        epoch += 1


def training_text(directory, max_chars=1_000_000_000, doc_cap=10_000):
    """Training documents (each capped) for the tokenizer, with progress."""
    nchars, shown = 0, time.time()
    for texts, epoch in iter_documents(directory, "train"):
        if epoch > 1:
            return
        for text in texts:
            doc = text[:doc_cap]
            nchars += len(doc)
            yield doc
            if time.time() - shown > 5:
                shown = time.time()
                print(f"  tokenizer: read {nchars / 1e6:.1f} M characters", flush=True)
            if nchars >= max_chars:
                return


def train_tokenizer(directory, vocab_size):
    """BPE with rustbpe (as the original), saved as tiktoken ranks; 'byte' saves the 256 byte tokens only."""
    import rustbpe

    path = Path(directory) / "tokenizer.pkl"
    if path.exists():
        with open(path, "rb") as f:
            trained = pickle.load(f).get("vocab_size")
        if trained == vocab_size:
            print(f"Tokenizer: already trained at {path}")
            return
        print(f"Tokenizer: {path} has vocabulary {trained}, not {vocab_size}: training again")
    t0 = time.time()
    if vocab_size == "byte":
        ranks, pattern = {bytes([i]): i for i in range(256)}, SPLIT_PATTERN
    else:
        print(f"Tokenizer: training a {vocab_size}-token BPE tokenizer with rustbpe...", flush=True)
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(training_text(directory), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        ranks = {bytes(k): v for k, v in sorted(bpe.get_mergeable_ranks(), key=lambda kv: kv[1])}  # stable bytes
        pattern = bpe.get_pattern()
    tmp = path.with_name("tokenizer.pkl.tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"pattern": pattern, "mergeable_ranks": ranks, "vocab_size": vocab_size}, f)
    os.replace(tmp, path)
    tok = Tokenizer.from_directory(directory)
    sample = "Hello world! Numbers: 123. Unicode: 你好"
    assert tok.decode(tok.encode(sample)) == sample, "tokenizer round trip failed"
    print(f"Tokenizer: {tok.get_vocab_size()} tokens in {time.time() - t0:.1f}s, saved to {path}")


# ---------------------------------------------------------------------------
# Runtime utilities (imported by train.py)
# ---------------------------------------------------------------------------


class Tokenizer:
    """tiktoken encoding plus the BOS id and each token's byte length (0 for special tokens).

    `vocab_size` truncates a trained BPE to its first merges: BPE merges are learned in rank order, so the
    first N ranks are themselves a valid, smaller tokenizer. train.py uses this to scale the vocabulary down on CPU.
    """

    def __init__(self, pattern, mergeable_ranks, vocab_size=None):
        import tiktoken

        n = len(mergeable_ranks) if vocab_size is None else max(256, min(len(mergeable_ranks), vocab_size - len(SPECIAL_TOKENS)))
        ranks = {k: v for k, v in mergeable_ranks.items() if v < n}
        specials = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding(name=f"fleetlab-{n}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        self.bos_token_id = specials[BOS_TOKEN]
        self._lengths = [len(self.enc.decode_single_token_bytes(i)) for i in range(n)] + [0] * len(specials)

    @property
    def token_bytes(self):
        """int32 tensor: the byte length of every token id, 0 for special tokens."""
        import torch

        return torch.tensor(self._lengths, dtype=torch.int32)

    @classmethod
    def from_directory(cls, directory=None, vocab_size=None):
        directory = cache_dir() if directory is None else Path(directory)
        with open(directory / "tokenizer.pkl", "rb") as f:
            saved = pickle.load(f)
        return cls(saved["pattern"], saved["mergeable_ranks"], vocab_size)

    @classmethod
    def byte_level(cls):
        return cls(SPLIT_PATTERN, {bytes([i]): i for i in range(256)})

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        """str -> list of ids, list of str -> list of lists; `prepend` (an id) goes in front of each."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [prepend] + ids
        rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        return rows if prepend is None else [[prepend] + row for row in rows]

    def decode(self, ids):
        return self.enc.decode(ids)


def make_dataloader(tokenizer, B, T, split, device="cpu", buffer_size=1000, directory=None):
    """
    BOS-aligned best-fit packing: every row starts with BOS; each row takes the largest buffered document that
    still fits, and when none fits the shortest is cropped to fill the row exactly. No padding, every token used.
    Yields (inputs, targets, epoch) with inputs/targets of shape (B, T) on `device`.
    """
    import torch

    assert split in ("train", "val")
    directory = cache_dir() if directory is None else Path(directory)
    device = torch.device(device)
    batches = iter_documents(directory, split)
    bos = tokenizer.get_bos_token_id()
    threads = max(1, min(8, torch.get_num_threads()))
    docs, epoch = [], 1
    row = torch.empty((B, T + 1), dtype=torch.long)
    pin = device.type == "cuda"
    while True:
        for r in range(B):
            pos = 0
            while pos < T + 1:
                while len(docs) < buffer_size:
                    texts, epoch = next(batches)
                    docs.extend(tokenizer.encode(texts, prepend=bos, num_threads=threads))
                remaining = T + 1 - pos
                best, best_len = -1, 0
                for i, d in enumerate(docs):
                    if best_len < len(d) <= remaining:
                        best, best_len = i, len(d)
                        if best_len == remaining:
                            break
                if best < 0:  # nothing fits: crop the shortest document to fill the row
                    best = min(range(len(docs)), key=lambda i: len(docs[i]))
                doc = docs.pop(best)[:remaining]
                row[r, pos:pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                pos += len(doc)
        x, y = row[:, :-1].clone(), row[:, 1:].clone()
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin), epoch


def eval_settings(device_type):
    """(sequence length, validation tokens) of the fixed evaluation for this kind of device."""
    return (MAX_SEQ_LEN, EVAL_TOKENS) if device_type == "cuda" else (SMALL_SEQ_LEN, SMALL_EVAL_TOKENS)


# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------


def evaluate_bpb(model, tokenizer, batch_size):
    """
    Bits per byte: summed per-token cross-entropy (nats) / (ln 2 * summed target byte lengths), with special
    tokens (byte length 0) left out of both sums. Independent of the vocabulary. The same validation rows
    (the first eval_tokens // seq_len packed rows of the pinned split) are scored whatever the batch size.
    `model(x, y, reduction='none')` must return per-token losses.
    """
    import torch

    with torch.no_grad():
        return _evaluate_bpb(model, tokenizer, batch_size)


def _evaluate_bpb(model, tokenizer, batch_size):
    device = next(model.parameters()).device
    seq_len, eval_tokens = eval_settings(device.type)
    token_bytes = tokenizer.token_bytes.to(device)
    rows_left = max(1, eval_tokens // seq_len)
    loader = make_dataloader(tokenizer, batch_size, seq_len, "val", device=device)
    total_nats, total_bytes = 0.0, 0
    while rows_left > 0:
        x, y, _ = next(loader)
        x, y = x[:rows_left], y[:rows_left]
        rows_left -= x.size(0)
        loss = model(x, y, reduction="none").view(-1).float()
        nbytes = token_bytes[y.reshape(-1)]
        total_nats += (loss * (nbytes > 0)).sum().item()
        total_bytes += nbytes.sum().item()
    return total_nats / (math.log(2) * total_bytes)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(directory):
    """Hold an exclusive lock on the cache directory (POSIX; elsewhere no lock)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def parse_vocab(value):
    if value == "byte":
        return value
    n = int(value)
    if n <= 256 + len(SPECIAL_TOKENS):
        return "byte"
    return n


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for the GPT research template")
    parser.add_argument("--source", default="offline", help="offline | climbmix | tinystories | files:GLOB")
    parser.add_argument("--vocab-size", type=parse_vocab, default=VOCAB_SIZE, help="BPE vocabulary incl. special tokens, or 'byte'")
    parser.add_argument("--num-shards", type=int, default=10, help="climbmix training shards (the validation shard is always added)")
    args = parser.parse_args()

    directory = Path(os.environ["FLEETLAB_CACHE"]).expanduser() if os.environ.get("FLEETLAB_CACHE") else default_cache_dir(args.source, args.vocab_size)
    print(f"Cache directory: {directory}")
    with exclusive(directory):  # several workers of one machine may run the setup at the same time
        manifest = directory / "manifest.json"
        before = json.loads(manifest.read_text()) if manifest.exists() else {}
        if before.get("source") == args.source and args.source in ("climbmix", "tinystories"):
            print("Data: already prepared")
        else:  # local sources are re-read (cheap) so the manifest always matches the text on this machine
            prepare_data(directory, args.source, args.num_shards)
            if before and json.loads(manifest.read_text())["corpus_sha256"] != before.get("corpus_sha256"):
                (directory / "tokenizer.pkl").unlink(missing_ok=True)  # the text changed: retrain
        train_tokenizer(directory, args.vocab_size)
    if not os.environ.get("FLEETLAB_CACHE"):
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        (CACHE_ROOT / "last_prepared").write_text(str(directory) + "\n")
    print("Done! Ready to train.")
