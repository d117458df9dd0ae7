#!/usr/bin/env bash
# What a lent GPU (one H100, 16 cores, no network; python3 with torch, timm, numpy, pandas, pyyaml, but no
# papermill, nbconvert, cleanlab, lightly or dlib) does in ONE device call, within its 10-minute limit:
#   1. unpacks FERPlus (scripts/pack_ferplus.py: a stand-in root read through the canonical cache, with the
#      self-supervised checkpoint and the dlib landmarks; run ids are those of the real copy);
#   2. python -m ferlib bench --devices cuda --backbone resnet18 (the full profile's model, batch and input
#      size): its JSON into reports/bench/ and $OUT;
#   3. python -m ferlib study --profile full --estimate <that JSON>: the full grid's GPU-hours (it reads the
#      data only to count the splits, through the cache; it needs no notebook package);
#   4. scripts/gpu_cells.py: the cells of cpu_memorise_full at seeds 0, 1, 2 and 96 px, GPU_CHECK_AT_ONCE
#      train processes at a time, until the budget (GPU_CHECK_BUDGET_S, default 570 s for everything) is spent;
#      running cells are interrupted cleanly and resume from their last epoch when the script runs again on
#      the same machine;
#   5. the small files of the runs (no weights, no checkpoints: result.json, config.json, epochs.*, noise.json,
#      readout.npz, logs, gpu_cells.json) as $OUT/gpu_runs.tar.gz.NN, pieces of at most 15 MiB.
#
# The data travel in parts: the working tree is ~57 MiB of the 64 MiB a device call carries (reports/ with the
# 141 committed cpu_memorise cells and their 66 ablation cells, 50 MiB), and FERPlus packed with the checkpoint and
# the landmarks is 72 MiB: 12 parts of 6 MiB. Each call carries one part, which this script gathers in $WORK/parts
# on the (warm) machine; `bash scripts/gpu_check.sh stage` only gathers (each staging call costs device time: a
# few seconds plus the transfer). Here, once:
#   python scripts/pack_ferplus.py pack --data ../shared/data/ferplus --profile cpu_memorise_full \
#       --landmarks dlib --out .gpu/ferplus --part-mib 6
# then, with the device tool, one call per part and the script with the last:
#   run(command="bash scripts/gpu_check.sh stage", carry=[".gpu/ferplus/parts.json", ".gpu/ferplus/pack.tar.xz.00"])
#   run(command="bash scripts/gpu_check.sh stage", carry=[".gpu/ferplus/pack.tar.xz.01"])        (to .10)
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu/ferplus/pack.tar.xz.11"], timeout_s=600)
# Back here: cat <files_at>/gpu_runs.tar.gz.* | tar -xzf - -C <runs folder>.
#
# GPU_CHECK_TINY=1: the same steps on this CPU at toy size (the shipped sample unless GPU_CHECK_PARTS names
# packed parts, --devices cpu, ce only in the bench, 1 epoch of a test backbone, 120 s): tests/test_scripts.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TINY=${GPU_CHECK_TINY:-0}
if [ "$TINY" = 1 ]; then budget=120; at_once=2; else budget=570; at_once=8; fi
BUDGET_S=${GPU_CHECK_BUDGET_S:-$budget}
AT_ONCE=${GPU_CHECK_AT_ONCE:-$at_once}
PARTS=${GPU_CHECK_PARTS:-.gpu/ferplus}
WORK=${GPU_CHECK_WORK:-/tmp/ferlib-gpu}
BENCH_DIR=${GPU_CHECK_BENCH_DIR:-reports/bench}
OUT=${OUT:-$PWD/reports/gpu_check}
export FERLIB_CACHE=${FERLIB_CACHE:-$WORK/cache} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK" "$BENCH_DIR"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
start=$SECONDS
status=0
step() { echo "== $(( SECONDS - start ))s: $*"; }
failed() { echo "!! $1 failed (exit $2)"; status=1; }

step "data"
mkdir -p "$WORK/parts"
cp "$PARTS"/* "$WORK/parts/" 2>/dev/null  # this call's parts join those earlier calls carried
if [ "${1:-}" = stage ]; then ls -l "$WORK/parts"; exit 0; fi
if [ "$TINY" = 1 ] && [ ! -f "$WORK/parts/parts.json" ]; then
  data=data/ferplus_sample
else
  data=$WORK/ferplus
  $PY scripts/pack_ferplus.py unpack --parts "$WORK/parts" --root "$data" || { echo "!! no data: stopping"; exit 2; }
fi

step "bench"
if [ "$TINY" = 1 ]; then bench=(--devices cpu --methods ce --warmup 1 --steps 2); else
  bench=(--devices cuda --warmup 3 --steps 20); fi
rm -rf "$WORK/bench"
$PY -m ferlib bench "${bench[@]}" --options default --backbone resnet18 --batch-size 64 --image-size 48 \
  --out "$WORK/bench" --note "scripts/gpu_check.sh" || failed bench $?
report=$(ls "$WORK"/bench/*.json 2>/dev/null | head -1)
if [ -n "$report" ]; then
  cp "$report" "$BENCH_DIR/" && cp "$report" "$OUT/"
  step "estimate of the full profile from $(basename "$report")"
  $PY -m ferlib study --profile full --data "$data" --estimate "$report" || failed estimate $?
fi

step "cells"
if [ "$TINY" = 1 ]; then
  sets=(--set 'methods=["ce","scn"]' --set train.epochs=1 --set train_subset=128 --set backbone.name=test_resnet
        --set 'backbone.model_kwargs={}' --set backbone.weights=null --set train.device=cpu)
else
  sets=(--set train.device=cuda)
fi
left=$(( BUDGET_S - (SECONDS - start) - 40 ))  # 20 s for interrupted cells to stop, then the tarball
if [ "$left" -gt 10 ]; then
  $PY scripts/gpu_cells.py --profile cpu_memorise_full --data "$data" --runs "$WORK/runs" --set 'seeds=[0,1,2]' \
    --set train.image_size=96 "${sets[@]}" --at-once "$AT_ONCE" --budget-s "$left" --grace-s 20 \
    || failed cells $?
else
  echo "!! no time left for cells"
fi

step "tarball of the runs' small files"
rm -f "$OUT"/gpu_runs.tar.gz.*
if [ -d "$WORK/runs" ]; then
  tar -C "$WORK/runs" --exclude='*.pt' -czf - . | split -b 15M -d - "$OUT/gpu_runs.tar.gz."
  ls -l "$OUT"
fi
step "end (exit $status)"
exit $status
