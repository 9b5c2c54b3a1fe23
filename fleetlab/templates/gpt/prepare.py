"""
One-time data preparation for the GPT research template, and the fixed runtime pieces train.py imports
(tokenizer, packing dataloader, evaluate_bpb). READ-ONLY for experiments: the evaluation lives here.

Usage (the project's `setup` step, run once per worker, never per experiment):
    python prepare.py --source offline                 # no network: this Python's stdlib + site-packages text
    python prepare.py --source offline --max-mb 0      # ... all of it (default without CUDA: the first 48 MB)
    python prepare.py --source climbmix --num-shards 8 # the original's data (parquet shards from the HF hub)
    python prepare.py --source tinystories
    python prepare.py --source 'files:notes/**/*.md'   # your own text
    python prepare.py --source offline --vocab-size byte   # byte-level tokenizer, no BPE training

Data and tokenizer go to $FLEETLAB_CACHE, else ~/.cache/fleetlab/gpt/<source>-<vocab>; runs find the last
prepared directory through ~/.cache/fleetlab/gpt/last_prepared unless FLEETLAB_CACHE says where it is.

The text is tokenised once, here (and again only for another vocabulary): tokens-<id>/{train,val}.bin hold every
document as [BOS, tokens...] back to back (uint16, or uint32 past 65,536 ids), {split}.idx.npy the documents' start
offsets. Runs memory-map these and pack rows with numpy on a background thread, so the GPU never waits on text.
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
import queue
import sys
import sysconfig
import threading
import time
from bisect import bisect_right, insort
from pathlib import Path

import numpy as np

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
SMALL_VOCAB_SIZE = 2048     # the vocabulary train.py takes on CPU / MPS (the BPE's first merges); tokenised in advance
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

# The offline source: every text and source file of this Python (standard library + site-packages), in a fixed
# pseudo-random order of their paths. On a machine without CUDA it stops at OFFLINE_CPU_MAX_MB: a CPU-scale run reads
# about a million tokens a minute, and tokenising the whole environment (~600 MB on a torch install) takes minutes
# there. `--max-mb` overrides (0 = everything).
OFFLINE_EXTENSIONS = {".py", ".pyi", ".pyx", ".pxd", ".pxi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".cuh", ".rs",
                      ".js", ".ts", ".md", ".rst", ".txt", ".toml", ".cfg", ".ini", ".json", ".yaml", ".yml", ".sh"}
OFFLINE_MAX_FILE_BYTES = 2_000_000   # larger files are data dumps (JSON tables, vendored bundles), not prose or code
OFFLINE_CPU_MAX_MB = 48
TOKENIZER_MAX_CHARS = 100_000_000   # BPE merges for an 8192 vocabulary settle long before this much text
PACKING = "bestfit-v2"             # part of the data fingerprint: the packer decides which tokens the metric scores

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


def write_corpus(directory, source, train_docs, val_docs, **extra):
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
    write_manifest(directory, source, files, **extra)


def write_manifest(directory, source, files, **extra):
    directory = Path(directory)
    shards = {name: sha256_file(directory / "data" / name) for split in files for name in files[split]}
    corpus = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(shards.items())).encode()).hexdigest()
    manifest = {"source": source, "train": files["train"], "val": files["val"], "sha256": shards,
                "corpus_sha256": corpus, **extra}
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
    The setup prints it as `fleetlab: data=<fingerprint>` (fleetlab pins the session's data with it) and so does
    train.py (a run measuring on other data than its worker prepared fails); fleetlab compares only results measured
    on the same data (a worker whose Python has another standard library builds another offline corpus, and would
    not match)."""
    directory = cache_dir() if directory is None else Path(directory)
    tok = directory / "tokenizer.pkl"
    parts = [read_manifest(directory)["corpus_sha256"], sha256_file(tok) if tok.exists() else "no-tokenizer-file",
             PACKING]
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


def local_corpus(directory, source, named, max_bytes=None):
    """Turn (relative name, path) pairs into a train/val corpus. Files go in sha256(name) order, a fixed shuffle that
    mixes packages (training sees them interleaved, and a byte cap, on file sizes, samples all of them); undecodable
    files are skipped and a document seen before is dropped (vendored copies, licences). Validation is pinned by file
    name; with too few files for that, by (name, document number). When the chosen files' names, sizes and times are
    those of the corpus already there, nothing is read again (every worker runs the setup)."""
    chosen, nbytes = [], 0
    for rel, path in sorted(named, key=lambda item: (_digest(item[0]), item[0])):
        if max_bytes is not None and nbytes >= max_bytes:
            break
        try:
            stat = os.stat(path)
        except OSError:
            continue
        chosen.append((rel, path, f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n"))
        nbytes += stat.st_size
    listing = hashlib.sha256(f"{source}:{max_bytes}\n{''.join(line for _, _, line in chosen)}".encode()).hexdigest()
    manifest = Path(directory) / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("listing_sha256") == listing:
        print(f"Data: {len(chosen)} files unchanged since the last prepare")
        return
    files, seen = [], set()
    for rel, path, _ in chosen:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs = []
        for doc in split_documents(text):
            key = hashlib.sha1(doc.encode()).digest()
            if key not in seen:
                seen.add(key)
                docs.append(doc)
        files.append((rel, docs))
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
    capped = f" (capped at {max_bytes / 1e6:.0f} MB)" if max_bytes is not None and nbytes >= max_bytes else ""
    print(f"Data: {len(files)} files, {nbytes / 1e6:.1f} MB{capped} -> {len(train):,} train / {len(val):,} "
          "validation documents")
    write_corpus(directory, source, train, val, listing_sha256=listing)


def offline_files():
    """(name, path) of every text/source file of this Python: the standard library as stdlib/..., the environment's
    site-packages as site-packages/... (names do not depend on where the interpreter lives)."""
    paths = sysconfig.get_paths()
    roots = [("stdlib", paths["stdlib"])] + [("site-packages", paths[k]) for k in ("purelib", "platlib")]
    skip = {"site-packages", "dist-packages", "__pycache__", ".git"}  # the stdlib's site-packages: another Python's
    named, done = {}, set()

    def walk(folder, prefix):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in skip:
                    walk(entry.path, f"{prefix}{entry.name}/")
            elif os.path.splitext(entry.name)[1] in OFFLINE_EXTENSIONS and entry.is_file():
                if entry.stat().st_size <= OFFLINE_MAX_FILE_BYTES:
                    named[prefix + entry.name] = entry.path

    for prefix, root in roots:
        root = os.path.abspath(root)
        if root not in done and os.path.isdir(root):
            done.add(root)
            walk(root, f"{prefix}/")
    return list(named.items())


def has_cuda():
    """Whether this machine has an NVIDIA GPU for training, without importing torch (seconds of start-up)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*"))


def offline_max_bytes(max_mb):
    """The offline source's byte cap: `--max-mb` if given (0 = none), else none with CUDA, OFFLINE_CPU_MAX_MB without."""
    if max_mb is None:
        max_mb = 0 if has_cuda() else OFFLINE_CPU_MAX_MB
    return int(max_mb * 1e6) if max_mb > 0 else None


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


def prepare_data(directory, source, num_shards=10, retry_delay=1.0, max_mb=None):
    if source == "offline":
        local_corpus(directory, source, offline_files(), offline_max_bytes(max_mb))
    elif source.startswith("files:"):
        pattern = source[len("files:"):]
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not paths:
            sys.exit(f"Data: no files match {pattern!r}.")
        root = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
        root = root.parent if root.is_file() else root
        named = [(Path(os.path.relpath(os.path.abspath(p), root)).as_posix(), Path(p)) for p in paths]
        local_corpus(directory, source, named, None if max_mb in (None, 0) else int(max_mb * 1e6))
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


def training_text(directory, max_chars=TOKENIZER_MAX_CHARS, doc_cap=10_000):
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
        h = hashlib.sha256(pattern.encode())  # names the token store: same merges and pattern, same tokens
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            h.update(len(token).to_bytes(4, "little") + token)
        self.identity = f"{self.enc.n_vocab}-{h.hexdigest()[:12]}"
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


# ---------------------------------------------------------------------------
# Token store: the corpus tokenised once, memory-mapped by every run
# ---------------------------------------------------------------------------


def token_dir(directory, tokenizer):
    return Path(directory) / f"tokens-{tokenizer.identity}"


def tokenize_split(directory, tokenizer, split, threads=None):
    """Write tokens-<id>/{split}.bin (every document as [BOS, tokens...]) and {split}.idx.npy (document start offsets,
    one more than there are documents). Written under temporary names and renamed: a reader never sees half a file."""
    out = token_dir(directory, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 65536 else np.uint32
    bos = tokenizer.get_bos_token_id()
    threads = threads or max(1, min(16, os.cpu_count() or 1))
    offsets, total, t0 = [0], 0, time.time()
    tmp_bin = out / f"{split}.bin.tmp"
    with open(tmp_bin, "wb") as f:
        for texts, epoch in iter_documents(directory, split, batch_size=1024):
            if epoch > 1:
                break
            rows = tokenizer.encode(texts, prepend=bos, num_threads=threads)
            lengths = [len(r) for r in rows]
            np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=sum(lengths)).tofile(f)
            offsets.extend((total + np.cumsum(lengths)).tolist())
            total = offsets[-1]
    np.save(out / f"{split}.idx.tmp.npy", np.asarray(offsets, dtype=np.int64))
    os.replace(out / f"{split}.idx.tmp.npy", out / f"{split}.idx.npy")
    os.replace(tmp_bin, out / f"{split}.bin")
    print(f"Tokens: {split} {len(offsets) - 1:,} documents, {total:,} tokens in {time.time() - t0:.1f}s -> {out}",
          flush=True)


def load_tokens(directory, tokenizer, split):
    """(tokens memmap, document offsets) of a split, tokenising it first if this vocabulary has not been (locked:
    several workers of a machine may start at once). Stale stores (other corpus) are rebuilt."""
    directory = Path(directory)
    out = token_dir(directory, tokenizer)
    corpus = read_manifest(directory)["corpus_sha256"]
    meta = out / f"{split}.json"

    def fresh():
        return meta.exists() and json.loads(meta.read_text()).get("corpus_sha256") == corpus

    if not fresh():
        out.mkdir(parents=True, exist_ok=True)
        with exclusive(out, name=f".{split}.lock"):
            if not fresh():
                tokenize_split(directory, tokenizer, split)
                meta.with_suffix(".tmp").write_text(json.dumps({"corpus_sha256": corpus}) + "\n")
                os.replace(meta.with_suffix(".tmp"), meta)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 65536 else np.uint32
    offsets = np.load(out / f"{split}.idx.npy")
    if offsets[-1] == 0:
        sys.exit(f"Data: the {split} split of {directory} holds no text.")
    return np.memmap(out / f"{split}.bin", dtype=dtype, mode="r", shape=(int(offsets[-1]),)), offsets


# ---------------------------------------------------------------------------
# Packing (numpy) and prefetching (a background thread)
# ---------------------------------------------------------------------------


class Packer:
    """
    BOS-aligned best-fit packing over the token store: every row starts with BOS; each row takes the largest buffered
    document that still fits, and when none fits the shortest is cropped to fill the row exactly (the rest of it is
    dropped). No padding, every token used. The buffer holds `buffer_size` documents and is topped up one document at
    a time, in corpus order; ties go to the earliest document. With `wrap` the stream starts over at the end of the
    split (the next epoch); without, packing stops when the split runs out.
    Rows depend only on the corpus and the row length, never on how many rows are asked for at once.
    """

    def __init__(self, tokens, offsets, row_len, buffer_size=1000, wrap=True):
        self.tokens, self.offsets, self.row_len, self.wrap = tokens, offsets, row_len, wrap
        self.lengths = np.diff(offsets)
        self.buffer_size = min(buffer_size, len(self.lengths))
        self.buffer = []                        # sorted (length, -arrival, doc)
        self.next_doc, self.arrivals, self.rows_done = 0, 0, 0

    def epochs_seen(self):
        """Tokens placed in rows so far / tokens in the split: how many times the data has been seen (fractional)."""
        return self.rows_done * self.row_len / self.offsets[-1]

    def _top_up(self):
        while len(self.buffer) < self.buffer_size:
            if self.next_doc == len(self.lengths):
                if not self.wrap:
                    return
                self.next_doc = 0
            self.arrivals += 1
            insort(self.buffer, (int(self.lengths[self.next_doc]), -self.arrivals, self.next_doc))
            self.next_doc += 1

    def pack(self, out):
        """Fill `out` (rows x row_len integer array) with the next rows; returns how many rows were filled (all of
        them, unless a packer without wrap ran out of documents)."""
        rows, row_len = out.shape
        assert row_len == self.row_len
        tokens = self.tokens.view(np.ndarray)  # plain slices: a memmap wraps each one in a new object
        for r in range(rows):
            remaining, row = row_len, out[r]
            while remaining:
                self._top_up()
                if not self.buffer:  # no wrap, split used up: this row stays unfilled
                    return r
                i = bisect_right(self.buffer, (remaining, 1)) - 1   # largest length <= remaining, earliest first
                if i < 0:  # nothing fits: crop the shortest (earliest of the shortest)
                    i = bisect_right(self.buffer, (self.buffer[0][0], 1)) - 1
                length, _, doc = self.buffer.pop(i)
                take, start, pos = min(length, remaining), self.offsets[doc], row_len - remaining
                row[pos:pos + take] = tokens[start:start + take]
                remaining -= take
            self.rows_done += 1
        return rows


class Prefetcher:
    """Runs `produce(slot)` on a background thread into `depth + 1` preallocated int32 buffers (pinned for CUDA), so
    packing overlaps the training step. A slot is refilled only after its copy to the device has completed."""

    def __init__(self, produce, shape, depth=2, pin=False):
        import torch

        self.produce = produce
        self.slots = [torch.empty(shape, dtype=torch.int32, pin_memory=pin) for _ in range(depth + 1)]
        self.free, self.ready = queue.Queue(), queue.Queue()
        for i in range(len(self.slots)):
            self.free.put((i, None))
        self.thread = threading.Thread(target=self._run, name="fleetlab-prefetch", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                i, done = self.free.get()
                if i is None:
                    return
                if done is not None:
                    done.synchronize()
                info = self.produce(self.slots[i].numpy())
                self.ready.put((i, info, None))
        except BaseException as e:  # handed to the consumer, which raises it
            self.ready.put((None, None, e))

    def get(self):
        i, info, error = self.ready.get()
        if error is not None:
            raise error
        return i, self.slots[i], info

    def release(self, i, done=None):
        self.free.put((i, done))

    def close(self):
        self.free.put((None, None))


def make_dataloader(tokenizer, B, T, split, device="cpu", buffer_size=1000, directory=None, prefetch=2):
    """
    Yields (inputs, targets, epochs) with inputs/targets (B, T) long tensors on `device`, packed by `Packer` from the
    token store; `epochs` is how many times the split has been seen so far (fractional). With `prefetch` > 0 the
    packing runs that many micro-batches ahead on a background thread; the batches are the same either way.
    """
    import torch

    assert split in ("train", "val")
    directory = cache_dir() if directory is None else Path(directory)
    device = torch.device(device)
    packer = Packer(*load_tokens(directory, tokenizer, split), T + 1, buffer_size)

    def produce(out):
        packer.pack(out)  # wraps around: always fills every row
        return packer.epochs_seen()

    def to_device(rows):
        rows = rows.to(device, non_blocking=True) if device.type != "cpu" else rows
        return rows[:, :-1].long().contiguous(), rows[:, 1:].long().contiguous()

    if not prefetch:
        rows = torch.empty((B, T + 1), dtype=torch.int32)
        while True:
            epochs = produce(rows.numpy())
            yield (*to_device(rows), epochs)
    cuda = device.type == "cuda"
    pf = Prefetcher(produce, (B, T + 1), depth=prefetch, pin=cuda)
    try:
        while True:
            i, rows, epochs = pf.get()
            x, y = to_device(rows)
            done = None
            if cuda:  # the slot may be refilled once the copy has happened
                done = torch.cuda.Event()
                done.record()
            elif device.type == "mps":
                torch.mps.synchronize()
            pf.release(i, done)
            yield x, y, epochs
    finally:
        pf.close()


def eval_settings(device_type):
    """(sequence length, validation tokens) of the fixed evaluation for this kind of device."""
    return (MAX_SEQ_LEN, EVAL_TOKENS) if device_type == "cuda" else (SMALL_SEQ_LEN, SMALL_EVAL_TOKENS)


def validation_rows(tokenizer, seq_len, eval_tokens, multiple=1, directory=None):
    """
    (rows, n): the packed validation rows of length seq_len + 1, and n, how many of them count: eval_tokens // seq_len,
    fewer if the pinned split runs out first (it is packed once, no document twice). Rows past n (copies of the first)
    pad the array to a multiple of `multiple`.
    """
    directory = cache_dir() if directory is None else Path(directory)
    packer = Packer(*load_tokens(directory, tokenizer, "val"), seq_len + 1, wrap=False)
    wanted = max(1, eval_tokens // seq_len)
    rows = np.empty((-(-wanted // multiple) * multiple, seq_len + 1), dtype=np.int32)
    n = min(wanted, packer.pack(rows))
    if n == 0:
        sys.exit(f"Data: the validation split holds less than one row of {seq_len + 1} tokens.")
    rows = rows[:-(-n // multiple) * multiple]
    rows[n:] = rows[:len(rows) - n]
    return rows, n


# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------


def evaluate_bpb(model, tokenizer, batch_size, grad_mode=False):
    """
    Bits per byte: summed per-token cross-entropy (nats) / (ln 2 * summed target byte lengths), with special
    tokens (byte length 0) left out of both sums. Independent of the vocabulary. The same validation rows
    (`validation_rows`) are scored whatever the batch size; every batch is full (rows past the counted ones fill the
    last), so a model compiled for one shape is never recompiled. `model(x, y, reduction='none')` must return
    per-token losses. grad_mode=True runs the forward with autograd on, as in training, so a model compiled for
    training is reused as it is (the numbers are the same; the graph is dropped batch by batch).
    """
    import torch

    with torch.set_grad_enabled(grad_mode):
        return _evaluate_bpb(model, tokenizer, batch_size)


def _evaluate_bpb(model, tokenizer, batch_size):
    import torch

    device = next(model.parameters()).device
    seq_len, eval_tokens = eval_settings(device.type)
    token_bytes = tokenizer.token_bytes.to(device)
    rows, n = validation_rows(tokenizer, seq_len, eval_tokens, multiple=batch_size)
    rows = torch.from_numpy(rows)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, n, batch_size):
        batch = rows[start:start + batch_size].to(device)
        x, y = batch[:, :-1].long().contiguous(), batch[:, 1:].long().contiguous()
        loss = model(x, y, reduction="none").detach().view(batch_size, -1).float()
        nbytes = token_bytes[y]
        counted = (torch.arange(batch_size, device=device) < n - start)[:, None]  # rows past n fill the batch only
        nbytes = nbytes * counted
        total_nats += (loss * (nbytes > 0)).sum(dtype=torch.float64)
        total_bytes += nbytes.sum()
    return total_nats.item() / (math.log(2) * total_bytes.item())


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(directory, name=".lock"):
    """Hold an exclusive lock on the cache directory (POSIX; elsewhere no lock)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(directory / name, "w") as f:
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
    parser.add_argument("--max-mb", type=float, default=None,
                        help=f"local sources: stop after this many MB of text (0 = all; offline default: all "
                             f"with CUDA, {OFFLINE_CPU_MAX_MB} without)")
    args = parser.parse_args()

    directory = Path(os.environ["FLEETLAB_CACHE"]).expanduser() if os.environ.get("FLEETLAB_CACHE") else default_cache_dir(args.source, args.vocab_size)
    print(f"Cache directory: {directory}")
    with exclusive(directory):  # several workers of one machine may run the setup at the same time
        manifest = directory / "manifest.json"
        before = json.loads(manifest.read_text()) if manifest.exists() else {}
        if before.get("source") == args.source and args.source in ("climbmix", "tinystories"):
            print("Data: already prepared")
        else:  # local sources are re-read (cheap) so the manifest always matches the text on this machine
            prepare_data(directory, args.source, args.num_shards, max_mb=args.max_mb)
            if before and json.loads(manifest.read_text())["corpus_sha256"] != before.get("corpus_sha256"):
                (directory / "tokenizer.pkl").unlink(missing_ok=True)  # the text changed: retrain
        train_tokenizer(directory, args.vocab_size)
        # tokenise once for every run, in the vocabulary train.py takes on this machine (another is tokenised when a
        # run first asks for it)
        tok = Tokenizer.from_directory(directory, vocab_size=None if has_cuda() else SMALL_VOCAB_SIZE)
        for split in ("train", "val"):
            load_tokens(directory, tok, split)
    if not os.environ.get("FLEETLAB_CACHE"):
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        (CACHE_ROOT / "last_prepared").write_text(str(directory) + "\n")
    print("Done! Ready to train.")
    print(f"fleetlab: data={data_fingerprint(directory)}")  # the worker's fingerprint: its runs must print the same
