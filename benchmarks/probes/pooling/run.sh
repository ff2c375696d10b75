#!/usr/bin/env bash
# The probe as run for docs/accuracy.md: features at four input sizes, splits with seeds 1-3 beside the
# committed one (seed 0), then heads with five seeds each. Writes docs/accuracy/pooling-probe.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${PROBE_DIR:-/tmp/multihead-pooling-probe}
mkdir -p "$OUT"
for size in 448 560 640 768; do
    [ -f "$OUT/pool$size.pt" ] || python benchmarks/probes/pooling/extract.py "$size" "$OUT/pool$size.pt"
done
python benchmarks/probes/pooling/splits.py "$OUT" 1 2 3
export THREADS=2 SEEDS=5
{
    SETS=default,+max,+gem,+grid2,+grid3,+grid2+grid2_17 python benchmarks/probes/pooling/train.py "$OUT/pool448.pt"
    SETS=default,+gem,+grid2 python benchmarks/probes/pooling/train.py "$OUT/pool640.pt"
    SETS=default python benchmarks/probes/pooling/train.py "$OUT/pool560.pt" "$OUT/pool768.pt"
    for seed in 1 2 3; do
        SPLIT="$OUT/split$seed.json" SETS=default python benchmarks/probes/pooling/train.py \
            "$OUT/pool448.pt" "$OUT/pool560.pt" "$OUT/pool640.pt" "$OUT/pool768.pt"
    done
} > docs/accuracy/pooling-probe.jsonl
