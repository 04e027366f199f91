#!/usr/bin/env bash
cd "$(dirname "$0")/.."
export TIKTOKEN_CACHE_DIR=$PWD/.gpu_data/tiktoken_cache PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$PWD/data/inductor_cache
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
L=$OUT/logs; mkdir -p $L
timeout 330 python bench.py config/gpt2_baseline.py config/gpt2_bytes.py --data_dir=data/g1t \
  --compile_mode=max-autotune-no-cudagraphs --json=$L/speed_h200_max-autotune-3.json > $L/speed_h200_max-autotune-3.log 2>&1
grep "^|" $L/speed_h200_max-autotune-3.log; el autotune
tar czf $OUT/logs.tgz -C $OUT logs
mapfile -t T < <(python -m pytest tests -k gpu --collect-only -q -p no:cacheprovider 2>/dev/null | grep ::)
TL=$(( 585 - $(date +%s) + T0 ))
for g in 0 1 2 3; do
  (for ((i=g; i<${#T[@]}; i+=4)); do echo "${T[i]}"; done | xargs timeout $TL python -m pytest -q -p no:cacheprovider \
    > $L/gpu_tests_$g.log 2>&1) &
done
wait; for g in 0 1 2 3; do echo "group $g: $(tail -1 $L/gpu_tests_$g.log)"; done; el tests
tar czf $OUT/logs.tgz -C $OUT logs
