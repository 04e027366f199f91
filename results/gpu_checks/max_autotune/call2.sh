#!/usr/bin/env bash
# call 2 of max-autotune on the warm machine: max-autotune rows (baseline from the cache, gpt2_bytes
# autotuned now), then the same two under default, all in this call.
cd "$(dirname "$0")/.."
export TIKTOKEN_CACHE_DIR=$PWD/.gpu_data/tiktoken_cache PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$PWD/data/inductor_cache
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
L=$OUT/logs; mkdir -p $L
for mode in max-autotune-no-cudagraphs default; do
  TL=400; [ $mode = default ] && TL=$(( 585 - $(date +%s) + T0 ))
  timeout $TL python bench.py config/gpt2_baseline.py config/gpt2_bytes.py --data_dir=data/g1t --compile_mode=$mode \
    --json=$L/speed_h200_$mode.json > $L/speed_h200_$mode.log 2>&1; grep "^|" $L/speed_h200_$mode.log; el $mode
done
tar czf $OUT/logs.tgz -C $OUT logs
