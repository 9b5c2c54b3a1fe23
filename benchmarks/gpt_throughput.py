"""Throughput and per-experiment overhead of the GPT template, and its data loader alone.

    python benchmarks/gpt_throughput.py --json                # one training run at the default scale of this device
    python benchmarks/gpt_throughput.py --loader              # the loader alone at the GPU shape (128 x 2048)
    python benchmarks/gpt_throughput.py --loader --against HEAD~1   # ... and another version's loader, as a ratio
    python benchmarks/gpt_throughput.py --hide                # CPU: step time with the prefetching loader / with one
                                                              # pre-made batch (1.0 = the loader is hidden)

A training run reports ms/step (median of the timed steps), tokens/s, MFU, compile (warm-up) s, eval s, total overhead
s (total - training seconds) and epochs, next to the original autoresearch run (H100 + FA3: 318 ms/step, 39.8 % MFU,
26 s overhead). `--cache-dir DIR` is the run's FLEETLAB_CACHE_DIR (compile caches): run twice with the same DIR for
cold and warm figures. `--cache` names a prepared data cache; by default the offline corpus is prepared in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "fleetlab" / "templates" / "gpt"
REPO = TEMPLATE.parents[2]
ORIGINAL = {"ms_per_step": 318.0, "mfu_percent": 39.8, "overhead_s": 26.0}  # program.md's example run (H100, FA3)
LOADER_SHAPE = (128, 2048)  # the GPU micro-batch: DEVICE_BATCH_SIZE x MAX_SEQ_LEN


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def ensure_prepared(cache: Path, env: dict[str, str], workdir: Path) -> float:
    t0 = time.time()
    if not (cache / "tokenizer.pkl").exists():
        run([sys.executable, str(TEMPLATE / "prepare.py"), "--source", "offline"], workdir, env)
    return time.time() - t0


def load_prepare(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# The loader alone
# ---------------------------------------------------------------------------


def time_loader(prepare, cache: Path, batches: int, prefetch: int | None, consumer_s: float,
                shape: tuple[int, int] = LOADER_SHAPE, vocab: int | None = None) -> float:
    """Main-thread ms per micro-batch of `prepare.make_dataloader` at `shape` (default: the GPU's, full vocabulary),
    with a consumer that holds each batch `consumer_s` seconds (a GPU step: the main thread waits, the GIL is free)."""
    B, T = shape
    tok = prepare.Tokenizer.from_directory(cache, vocab_size=vocab)
    kwargs = {"directory": cache} if prefetch is None else {"directory": cache, "prefetch": prefetch}
    loader = prepare.make_dataloader(tok, B, T, "train", **kwargs)
    with contextlib.redirect_stdout(sys.stderr):  # a first use tokenises and says so: not into --json's output
        next(loader)  # opening the store, first fill
    spent = 0.0
    for _ in range(batches):
        t0 = time.perf_counter()
        next(loader)
        spent += time.perf_counter() - t0
        if consumer_s:
            time.sleep(consumer_s)
    loader.close()
    return 1000 * spent / batches


def loader_figures(cache: Path, against: str | None, batches: int) -> dict:
    prepare = load_prepare(TEMPLATE / "prepare.py", "fleetlab_gpt_prepare")
    result = {
        "shape": list(LOADER_SHAPE),
        # prefetching, with the step's time free for the thread (a GPU step of the original: 318 ms / 2 micro-batches)
        "loader_ms_per_microbatch": round(time_loader(prepare, cache, batches, 2, 0.159), 2),
        # everything on the main thread: the packing's whole cost
        "pack_ms_per_microbatch": round(time_loader(prepare, cache, batches, 0, 0.0), 2),
    }
    if against:
        with tempfile.TemporaryDirectory() as tmp:
            old = Path(tmp) / "prepare.py"
            rel = (TEMPLATE / "prepare.py").relative_to(REPO).as_posix()
            show = subprocess.run(["git", "show", f"{against}:{rel}"], cwd=REPO, capture_output=True, text=True)
            if show.returncode != 0:
                sys.exit(f"git show {against}:{rel} failed: {show.stderr.strip()}")
            old.write_text(show.stdout)
            before = time_loader(load_prepare(old, "fleetlab_gpt_prepare_old"), cache, max(3, batches // 4), None, 0.0)
        result[f"loader_ms_per_microbatch_at_{against}"] = round(before, 1)
        result["speedup_main_thread"] = round(before / result["loader_ms_per_microbatch"], 1)
        result["speedup_packing"] = round(before / result["pack_ms_per_microbatch"], 1)
    return result


# ---------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------


def start_train(work: Path, env: dict[str, str], static_batch: bool = False) -> subprocess.Popen:
    """Start one train.py run in a fresh copy; `static_batch` reuses the first batch (no loader in the loop)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copy(TEMPLATE / "prepare.py", work / "prepare.py")
    source = (TEMPLATE / "train.py").read_text()
    if static_batch:
        line = "        x, y, epochs = next(train_loader)\n"
        assert source.count(line) == 1, "train.py's loop no longer fetches batches as the benchmark expects"
        source = source.replace(line, "        pass  # benchmark: the first batch again\n")
    (work / "train.py").write_text(source)
    return subprocess.Popen([sys.executable, "train.py"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish_train(proc: subprocess.Popen) -> tuple[dict[str, float], str]:
    log, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"train.py failed:\n{log[-3000:]}")
    summary = {k: float(v) for k, v in re.findall(r"^(\w+):\s+(\S+)$", log.split("\n---\n")[-1], re.MULTILINE)}
    return summary, log


def run_figures(summary: dict[str, float], log: str) -> dict:
    tokens_per_step = int(re.search(r"tokens per step: (\d+)", log).group(1))
    ms = summary["step_ms"]
    mfu_mean = summary["mfu_percent"]
    mean_ms = summary["training_seconds"] * 1000 / max(1, summary["timed_steps"])
    return {
        "ms_per_step": ms,
        "tokens_per_s": round(tokens_per_step / (ms / 1000)),
        "mfu_percent": round(mfu_mean * mean_ms / ms, 2),  # at the median step (the summary's is at the mean)
        "compile_s": summary["warmup_seconds"],
        "eval_s": summary["eval_seconds"],
        "overhead_s": round(summary["total_seconds"] - summary["training_seconds"], 1),
        "epochs": summary["epochs"],
        "num_steps": int(summary["num_steps"]),
        "training_seconds": summary["training_seconds"],
        "total_seconds": summary["total_seconds"],
        "val_bpb": summary["val_bpb"],
        "peak_memory_mb": summary["peak_vram_mb"],
        "num_params_M": summary["num_params_M"],
        "tokens_per_step": tokens_per_step,
        "attention": re.search(r"attention (\w+)", log).group(1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="a prepared data cache (FLEETLAB_CACHE); default: offline corpus, temp dir")
    parser.add_argument("--cache-dir", help="FLEETLAB_CACHE_DIR for the run (compile caches); default: a temp dir")
    parser.add_argument("--budget", type=float, help="training seconds (default: train.py's, 60 on CPU, 300 on a GPU)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the run (a CPU fleet slot uses 1)")
    parser.add_argument("--loader", action="store_true", help="measure the loader alone at 128 x 2048")
    parser.add_argument("--against", help="with --loader: also measure prepare.py of this git revision")
    parser.add_argument("--batches", type=int, default=40, help="with --loader: micro-batches timed")
    parser.add_argument("--hide", action="store_true", help="step time with the loader / with a pre-made batch")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fleetlab-gpt-bench-") as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache).resolve() if args.cache else tmp / "cache"
        env = dict(os.environ, FLEETLAB_CACHE=str(cache), OMP_NUM_THREADS=str(args.threads), FLEETLAB_SEED="42",
                   FLEETLAB_CACHE_DIR=str(Path(args.cache_dir).resolve() if args.cache_dir else tmp / "compile"))
        if args.budget:
            env["FLEETLAB_TIME_BUDGET"] = str(args.budget)
        prepare_s = ensure_prepared(cache, env, tmp)
        if args.loader:
            result = loader_figures(cache, args.against, args.batches)
        elif args.hide:
            env.setdefault("FLEETLAB_TIME_BUDGET", "20")
            # side by side, one thread each, so both see the same load; twice, the other one started first the 2nd time
            pairs = []
            for order in ((False, True), (True, False)):  # False: the loader, True: the pre-made batch
                procs = {static: start_train(tmp / f"static-{static}", env, static) for static in order}
                pairs.append({static: finish_train(proc) for static, proc in procs.items()})
            log = pairs[0][False][1]
            loaded = {"step_ms": statistics.median(p[False][0]["step_ms"] for p in pairs)}
            static = {"step_ms": statistics.median(p[True][0]["step_ms"] for p in pairs)}
            ratios = [round(p[False][0]["step_ms"] / p[True][0]["step_ms"], 3) for p in pairs]
            # the loader's whole cost at this run's shape, were it not hidden: micro-batches per step x packing time
            T = int(re.search(r"'sequence_len': (\d+)", log).group(1))
            micro = int(re.search(r"gradient accumulation steps: (\d+)", log).group(1))
            B = int(re.search(r"tokens per step: (\d+)", log).group(1)) // micro // T
            vocab = int(re.search(r"'vocab_size': (\d+)", log).group(1))
            prepare = load_prepare(TEMPLATE / "prepare.py", "fleetlab_gpt_prepare")
            pack_ms = time_loader(prepare, cache, 200, 0, 0.0, shape=(B, T), vocab=vocab)
            result = {"step_ms_with_loader": loaded["step_ms"], "step_ms_premade_batch": static["step_ms"],
                      "step_time_ratio": round(loaded["step_ms"] / static["step_ms"], 3), "ratio_per_pair": ratios,
                      "microbatch": [B, T], "pack_ms_per_microbatch": round(pack_ms, 3),
                      "loader_share_of_step_if_serial": round(micro * pack_ms / static["step_ms"], 4),
                      "budget_s": float(env["FLEETLAB_TIME_BUDGET"]), "threads": args.threads}
        else:
            summary, log = finish_train(start_train(tmp / "run", env))
            result = run_figures(summary, log)
            result["loader"] = loader_figures(cache, None, 20)
            result["loader_ms_per_microbatch"] = result["loader"]["loader_ms_per_microbatch"]
            result["device"] = re.search(r"^Device: (\S+)", log, re.MULTILINE).group(1)
            result["original"] = ORIGINAL
        result["prepare_seconds"] = round(prepare_s, 1)

    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        mine = f"{value}"
        if key in ORIGINAL and not args.loader:
            mine += f"   (original, H100 + FA3: {ORIGINAL[key]})"
        print(f"{key:28s} {mine}")


if __name__ == "__main__":
    main()
