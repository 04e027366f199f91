#!/usr/bin/env bash
# call 4, on the machine warm from calls 1-3 (both modes' graphs and autotuning in data/inductor_cache)
export TIKTOKEN_CACHE_DIR=$PWD/.gpu_data/tiktoken_cache TORCHINDUCTOR_CACHE_DIR=$PWD/data/inductor_cache
L=$OUT/logs; mkdir -p $L; T0=$(date +%s)
for m in default max-autotune-no-cudagraphs; do
  timeout 130 python bench.py config/gpt2_baseline.py config/gpt2_bytes.py --data_dir=data/g1t --compile_mode=$m \
    --json=$L/ab_$m.json > $L/ab_$m.log 2>&1
  grep "^|" $L/ab_$m.log | tail -2; echo "[$(( $(date +%s)-T0 ))s] $m"
done
tar czf $OUT/logs.tgz -C $OUT logs
