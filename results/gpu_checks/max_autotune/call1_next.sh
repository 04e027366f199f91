#!/usr/bin/env bash
# next session (carry .gpu_data .anchors .gpu). `bash .gpu/next.sh test`: every GPU test at HEAD, in 4
# parallel processes (the suite took 250 s that way at 2e0c597), including the new recurrent case at
# training sizes (the doubling scan and its hand-written backward, compiled, against eager SDPA:
# never run on a GPU yet). `bash .gpu/next.sh autotune`: the one compile option never tried for issue
# 8, max-autotune (Triton matmul templates with fused epilogues, flex block sizes searched); run it
# twice on a warm machine: the first call fills the inductor cache (autotuning takes minutes), the
# second times every row from the cache. Then, if planners want it: time a recurrent byte GPT in the recommended
# all-layers config (add config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel_recurrent.py:
# exec the attention one, streams = [dict(streams[0], mixer="recurrent")]) beside it and the baseline.
cd "$(dirname "$0")/.."
export TIKTOKEN_CACHE_DIR=$PWD/.gpu_data/tiktoken_cache PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$PWD/data/inductor_cache
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
L=$OUT/logs; mkdir -p $L; git log --oneline -1 > $L/commit.txt
if [ "$1" = test ]; then
  mapfile -t T < <(python -m pytest tests -k gpu --collect-only -q -p no:cacheprovider 2>/dev/null | grep ::)
  for g in 0 1 2 3; do
    (for ((i=g; i<${#T[@]}; i+=4)); do echo "${T[i]}"; done | xargs timeout 560 python -m pytest -q -p no:cacheprovider \
      > $L/gpu_tests_$g.log 2>&1) &
  done
  wait; for g in 0 1 2 3; do echo "group $g: $(tail -1 $L/gpu_tests_$g.log)"; done; el tests
  tar czf $OUT/logs.tgz -C $OUT logs; exit
fi
if [ "$1" = autotune ] || [ "$1" = fill ]; then
  [ -f data/g1t/meta.json ] || python prepare.py --train .gpu_data/train_00.jsonl.xz --val .gpu_data/val.jsonl.xz \
    --out data/g1t --tasks_fraction 0.05 --workers 15 > $L/prepare.log 2>&1; el prepared
  MODES="default max-autotune-no-cudagraphs"
  [ "$1" = fill ] && MODES=max-autotune-no-cudagraphs
  for mode in $MODES; do
    TL=240; A=; [ $mode = default ] || { TL=${2:-330}; A=--anchor=.anchors/nanogpt_bench.py; }
    timeout $TL python bench.py $A config/gpt2_baseline.py config/gpt2_bytes.py \
      config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py --data_dir=data/g1t --compile_mode=$mode \
      --json=$L/speed_h200_$mode.json 2>&1 | tee $L/speed_h200_$mode.log | tail -5; el "$mode"
  done
  tar czf $OUT/logs.tgz -C $OUT logs; exit
fi
[ -f data/g1t/meta.json ] || python prepare.py --train .gpu_data/train_00.jsonl.xz --val .gpu_data/val.jsonl.xz \
  --out data/g1t --tasks_fraction 0.05 --workers 15 > $L/prepare.log 2>&1
timeout 500 python bench.py config/gpt2_baseline.py config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py \
  config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel_recurrent.py --data_dir=data/g1t \
  --json=$L/speed_h200_recurrent_all_layers.json 2>&1 | tee $L/speed_h200_recurrent_all_layers.log | tail -6
tar czf $OUT/logs.tgz -C $OUT logs
