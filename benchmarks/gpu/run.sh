#!/usr/bin/env bash
# One prepared GPU run: every GPU measurement of this project in one call, under 8 minutes on one H100/H200.
#   bash benchmarks/gpu/run.sh OUT_DIR            # on the GPU machine
#   bash benchmarks/gpu/run.sh OUT_DIR --smoke    # anywhere: the same code on the CPU at tiny sizes, in seconds
# Writes OUT_DIR/results.json, summary.md, run.log (and resnet18*.part* if the machine has those weights cached).
# Python stops itself at its own deadline; timeout kills it 20 s later if it hangs, and summary.py then still
# writes summary.md from the partial results.json. See benchmarks/gpu/README.md.
set -uo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUT_DIR [--smoke]" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/../.." || exit 2

PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the project's venv here; on the device (no venv travels) the image's python3
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then PY=.venv/bin/python; else PY=python3; fi
fi
LIMIT=${GPU_RUN_LIMIT_S:-450}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

{
    echo "run.sh: $(date -u +%FT%TZ) python=$PY ($("$PY" -V 2>&1)) args=$* limit=${LIMIT}s out=$OUT"
    timeout -k 20 "$LIMIT" "$PY" benchmarks/gpu/run_gpu.py "$OUT" "$@"
    rc=$?
    [ $rc -eq 124 ] && echo "run.sh: Python hit the ${LIMIT} s limit; results.json holds what was measured"
    "$PY" benchmarks/gpu/summary.py "$OUT" || echo "run.sh: summary.py failed"
    echo "run.sh: $(date -u +%FT%TZ) done, rc=$rc"
    exit $rc
} 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
