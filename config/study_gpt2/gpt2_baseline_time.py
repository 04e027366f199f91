# Arm of the GPT-2-small study (results/gpt2_pair/): config/baseline.py given the steps that
# config/bytes_full.py costs: lab/study.py scales its max_iters by that arm's step time over its own, both
# measured by bench.py before training (FINDINGS.md).
exec(open("config/baseline.py").read())
out_dir = "out-gpt2-baseline-time"
_match_time_of = "gpt2_bytes_all_layers"
