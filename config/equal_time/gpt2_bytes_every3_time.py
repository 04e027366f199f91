# Arm of the equal-wall-clock study (issue 29; command in gpt2_baseline_time.py): config/bytes_every3_lean.py
# trained as long as gpt2_baseline_time's steps take (lab/study.py chains the match: its steps are
# gpt2_baseline_time's x the baseline's step time / its own, measured by bench.py in one call).
exec(open("config/bytes_every3_lean.py").read())
out_dir = "out-equal-time-bytes-every3-time"
_match_time_of = "gpt2_baseline_time"
