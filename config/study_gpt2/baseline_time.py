# Study arm of the GPT-2-small pair: config/baseline.py matched in wall-clock to config/bytes.py. lab/study.py
# scales its max_iters by bytes.py's step time over its own, both measured by bench.py (FINDINGS.md):
# python -m lab.study config/baseline.py config/bytes.py config/study_gpt2/baseline_time.py ...
exec(open("config/baseline.py").read())
out_dir = "out-baseline-time"
_match_time_of = "bytes"
