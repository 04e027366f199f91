# Arm of the equal-wall-clock study (issue 29): config/baseline.py given as many steps as gpt2_bytes
# takes in the same GPU time. lab/study.py scales its max_iters by gpt2_bytes' step time over its own,
# measured by bench.py (OUT/time_match.json; write it from a bench.py call that also ran the anchor to
# name the GPU). The other two arms' runs are those of results/gpt2_pair (copied into OUT/runs as
# gpt2_baseline_s* and gpt2_bytes_s*: the study then trains only this arm):
# python -m lab.study config/equal_time/*.py --baseline=gpt2_baseline --seeds=3 --out=results/equal_time \
#     --max_iters=1000 --train_args="--data_dir=data/gutenberg_tasks --eval_interval=250" \
#     --text2=wikipedia/val.jsonl.xz --eval_args="--dtype bfloat16 --task_items 60 --pairs 100 --max_bytes 150000"
exec(open("config/baseline.py").read())
out_dir = "out-equal-time-baseline-time"
_match_time_of = "gpt2_bytes"
