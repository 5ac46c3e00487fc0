#!/usr/bin/env bash
# The GPU checks in one call on a lent GPU machine, within 8 minutes (7.5 at most; docs/gpu.md):
#   1. the GPU tests (pytest -m gpu),
#   2. bench/bench_gpu.py --device cuda: serial vs device pipelines, images/s, the split
#      decode / forward / proposals / storage, the commit waits, the proposals alone,
#   3. bench/bench_index.py --device cuda: model-only vs end-to-end images/s, then the same split.
# Every step has its own time limit, so one that hangs cannot use up the others' time; the
# figures are printed as each step ends. Run from a checkout with fgsearch installed
# (pip install -e '.[dev]'); PY names the interpreter (default .venv/bin/python, else python3).
#   bash bench/gpu_check.sh            # N=1024 images, batch 256
#   N=2048 BATCH=256 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
N=${N:-1024}
BATCH=${BATCH:-256}
WORK=$(mktemp -d -t fgsearch-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
status=0

step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0))s ==="
    [ $rc -eq 0 ] || status=1
}

"$PY" - <<'PY' || exit 1
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: torch sees no CUDA GPU; run this on a GPU machine")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
step 100 "GPU tests" "$PY" -m pytest -q -m gpu tests/model/test_model_gpu.py tests/regions/test_auto_torch.py tests/ingest/test_ingest_device.py
step 190 "bench_gpu" "$PY" bench/bench_gpu.py --device cuda --n "$N" --batch "$BATCH" --repeats 2 --pipelines serial,device --keep "$WORK"
step 160 "bench_index" "$PY" bench/bench_index.py --device cuda --n "$N" --batch "$BATCH" --repeats 1 --keep "$WORK"
exit $status
