"""Throughput of the GPT template at its default scale: tokens/s and optimizer steps in a fixed budget.

On CPU (the default scale train.py picks there) it runs a 60 s budget; on a CUDA GPU the original's 300 s budget,
and reports MFU next to the original autoresearch figures (H100: ~40 % MFU, ~953 steps in 5 minutes).

    python benchmarks/gpt_throughput.py                   # prepares the offline corpus in a temp cache, then trains
    python benchmarks/gpt_throughput.py --cache DIR --budget 60 --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "fleetlab" / "templates" / "gpt"
ORIGINAL_H100 = {"mfu_percent": 39.8, "num_steps": 953, "budget_s": 300}  # autoresearch's README / program.md


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def _children_cpu_s() -> float:
    try:
        import resource
    except ImportError:  # not POSIX
        return float("nan")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="a prepared cache (FLEETLAB_CACHE); default: prepare the offline corpus in a temp dir")
    parser.add_argument("--budget", type=float, help="training seconds (default 60 on CPU, 300 on a GPU)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the run (a fleet slot uses 1)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fleetlab-gpt-bench-") as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache) if args.cache else tmp / "cache"
        env = dict(os.environ, FLEETLAB_CACHE=str(cache), OMP_NUM_THREADS=str(args.threads), FLEETLAB_SEED="42")
        t0 = time.time()
        if not (cache / "tokenizer.pkl").exists():
            run([sys.executable, str(TEMPLATE / "prepare.py"), "--source", "offline"], tmp, env)
        prepare_s = time.time() - t0
        work = tmp / "run"
        work.mkdir()
        for name in ("train.py", "prepare.py"):
            shutil.copy(TEMPLATE / name, work / name)
        probe = run([sys.executable, "-c", "import torch; print(torch.cuda.is_available() and torch.cuda.get_device_name() or 'cpu')"], work, env)
        device = probe.strip().splitlines()[-1]
        gpu = device != "cpu"
        env["FLEETLAB_TIME_BUDGET"] = str(args.budget or (300 if gpu else 60))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        cpu0 = _children_cpu_s()
        log = run([sys.executable, "train.py"], work, env)
        cpu_s = _children_cpu_s() - cpu0

    summary = {k: float(v) for k, v in re.findall(r"^(\w+):\s+(\S+)$", log.split("\n---\n")[-1], re.MULTILINE)}
    grad_accum = int(re.search(r"gradient accumulation steps: (\d+)", log).group(1))
    steps = int(summary["num_steps"])
    untimed = 10 if gpu else 1  # train.py's warm-up steps, not counted in training_seconds
    tokens_per_step = int(re.search(r"tokens per step: (\d+)", log).group(1))
    result = {
        "device": device,
        "threads": args.threads,
        "budget_s": float(env["FLEETLAB_TIME_BUDGET"]),
        "training_seconds": summary["training_seconds"],
        "num_steps": steps,
        "tokens_per_step": tokens_per_step,
        "grad_accum_steps": grad_accum,
        "tokens_per_s": round(tokens_per_step * (steps - untimed) / summary["training_seconds"]),
        "mfu_percent": summary["mfu_percent"],
        "val_bpb": summary["val_bpb"],
        "num_params_M": summary["num_params_M"],
        "peak_memory_mb": summary["peak_vram_mb"],
        "total_seconds": summary["total_seconds"],
        "prepare_seconds": round(prepare_s, 1),
        # a shared machine: the CPU share the run got (CPU seconds / wall seconds) and the load when it started
        "cpu_share": round(cpu_s / summary["total_seconds"], 2),
        "load_average_1m": round(load, 2),
    }
    if "H100" in device:
        result["original_h100"] = ORIGINAL_H100
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        print(f"{key:18s} {value}")
    if "H100" in device:
        print(f"original autoresearch on H100: ~{ORIGINAL_H100['mfu_percent']} % MFU, ~{ORIGINAL_H100['num_steps']} steps in 300 s")


if __name__ == "__main__":
    main()
