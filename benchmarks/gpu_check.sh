#!/usr/bin/env bash
# The GPT template on one GPU against the original autoresearch run (H100 + FA3: 318 ms/step, 39.8 % MFU, 26 s of
# overhead per experiment): the throughput benchmark cold, then warm (the same compile cache), then a 5-minute
# quickstart. Targets: ms/step <= 318, MFU >= 40 %, overhead <= 20 s warm (<= 45 s cold), >= 5 quickstart experiments.
#
#   benchmarks/gpu_check.sh              # everything, about 12 minutes (prepare ~2, two 30 s runs ~3, quickstart ~6)
#   benchmarks/gpu_check.sh bench        # prepare + cold + warm only (fits one 10-minute call of the device tool)
#   benchmarks/gpu_check.sh quickstart   # the quickstart only (after `bench` on the same machine: data already there)
#
# Installs nothing. Needs python3 with CUDA torch, numpy, pyarrow, tiktoken and rustbpe, and for the quickstart
# fleetlab's own dependencies (pyproject.toml); wheels of missing ones may be put in ./.whl: they are unpacked into a
# temp dir and put on PYTHONPATH, not installed. Figures go to $OUT (else /tmp/fleetlab-gpu-check/out); data and
# compile caches to /tmp/fleetlab-gpu-check, so a second call on the same machine reuses them.
# With the device tool (python 3.12 there, without rustbpe): fill .whl first, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl rustbpe optuna alembic colorlog greenlet mako sqlalchemy tomli_w
# then run `benchmarks/gpu_check.sh bench` and `benchmarks/gpu_check.sh quickstart`, each with carry [".whl"].
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
STATE=${FLEETLAB_GPU_CHECK_DIR:-/tmp/fleetlab-gpu-check}
OUTDIR=${OUT:-$STATE/out}
BUDGET=${BUDGET:-30}   # training seconds per benchmark run: ~90 timed steps, enough for a median; data stays unrepeated
MAX_MB=${MAX_MB:-256}  # the offline corpus quickstart takes on a GPU (fleetlab/quickstart.py GPU_OFFLINE_MB)
STAGE=${1:-all}
mkdir -p "$STATE" "$OUTDIR" "$STATE/bin"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# the template's commands say `python`: make it this Python where only python3 exists
command -v python >/dev/null || { ln -sf "$(command -v "$PY")" "$STATE/bin/python"; export PATH="$STATE/bin:$PATH"; }

missing() {
  "$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "pyarrow", "tiktoken", "rustbpe", "scipy", "sklearn", "rich", "matplotlib", "yaml", "optuna"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
}
if [ -n "$(missing)" ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" \
    "$ROOT"/.whl/*.whl || { echo "gpu_check: the wheels in .whl could not be unpacked"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$STATE/site"
fi
if [ -n "$(missing)" ]; then
  echo "gpu_check: $PY lacks $(missing); put their wheels in $ROOT/.whl (see above) and run again."
  exit 1
fi
# GPU_CHECK_CPU=1 lets the script itself be tried on a machine without a GPU (the figures then mean nothing)
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || [ "${GPU_CHECK_CPU:-0}" = 1 ] \
  || { echo "gpu_check: torch sees no CUDA GPU here."; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUTDIR/gpu.txt"

DATA="$HOME/.cache/fleetlab/gpt/offline-8192"   # where the quickstart's setup prepares, so it finds the data ready
prepare() {
  echo "== prepare: offline corpus, $MAX_MB MB"
  local t0=$SECONDS
  (cd "$STATE" && "$PY" "$ROOT/fleetlab/templates/gpt/prepare.py" --source offline --max-mb "$MAX_MB") \
    > "$OUTDIR/prepare.log" 2>&1 || { tail -20 "$OUTDIR/prepare.log"; echo "gpu_check: prepare failed"; exit 1; }
  tail -4 "$OUTDIR/prepare.log"
  echo "prepare_seconds: $((SECONDS - t0))"
}

bench() {
  for kind in cold warm; do
    echo "== throughput, $kind compile cache ($STATE/compile), ${BUDGET} s of training"
    "$PY" "$ROOT/benchmarks/gpt_throughput.py" --cache "$DATA" --cache-dir "$STATE/compile" --budget "$BUDGET" \
      --threads "${THREADS:-8}" --json > "$OUTDIR/throughput_$kind.json" 2> "$OUTDIR/throughput_$kind.err" \
      || { tail -30 "$OUTDIR/throughput_$kind.json" "$OUTDIR/throughput_$kind.err"; echo "gpu_check: $kind run failed"; exit 1; }
  done
  "$PY" - "$OUTDIR/throughput_cold.json" "$OUTDIR/throughput_warm.json" <<'EOF'
import json, sys
cold, warm = (json.load(open(p)) for p in sys.argv[1:])
original = warm["original"]
rows = [("ms per step (median)", "ms_per_step", original["ms_per_step"]), ("tokens/s", "tokens_per_s", None),
        ("MFU %", "mfu_percent", original["mfu_percent"]), ("compile s", "compile_s", None),
        ("eval s", "eval_s", None), ("overhead s (total - training)", "overhead_s", original["overhead_s"]),
        ("loader main-thread ms / micro-batch", "loader_ms_per_microbatch", None), ("epochs", "epochs", None),
        ("val_bpb", "val_bpb", None), ("peak memory MB", "peak_memory_mb", 45060)]
print(f"{'figure':38s} {'cold':>12s} {'warm':>12s} {'original (H100, FA3)':>22s}")
for label, key, orig in rows:
    print(f"{label:38s} {cold[key]!s:>12s} {warm[key]!s:>12s} {'' if orig is None else orig!s:>22s}")
print(f"attention: {warm['attention']}; parameters: {warm['num_params_M']} M; tokens per step: {warm['tokens_per_step']}")
EOF
}

quickstart() {
  echo "== quickstart, 5 minutes, one slot per GPU"
  rm -rf "$STATE/quickstart"
  local t0=$SECONDS
  (cd "$STATE" && "$PY" -c "from fleetlab.cli import main; main()" quickstart --dir "$STATE/quickstart" --minutes 5) \
    > "$OUTDIR/quickstart.log" 2>&1
  local rc=$?
  tail -8 "$OUTDIR/quickstart.log"
  cp "$STATE/quickstart/results.tsv" "$OUTDIR/results.tsv" 2>/dev/null
  echo "quickstart_rc: $rc; wall_seconds: $((SECONDS - t0)) (target: >= 5 experiments finished, epochs < 1 each)"
  echo "epochs per run:"; find "$STATE/quickstart" -name run.log -exec grep -h "^epochs:" {} + 2>/dev/null | sort | uniq -c
}

case "$STAGE" in
  bench) prepare; bench ;;
  quickstart) prepare; quickstart ;;
  all) prepare; bench; quickstart ;;
  *) echo "gpu_check: unknown stage '$STAGE'; valid stages are: all, bench, quickstart"; exit 2 ;;
esac
