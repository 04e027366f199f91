# Arm of the equal-wall-clock study (issue 29; command in gpt2_baseline_time.py): config/bytes.py (the
# default since this study: layers 0, 3, 6 and 9 read the bytes) trained as long as gpt2_baseline_time's
# steps take (lab/study.py chains the match: its steps are gpt2_baseline_time's x the baseline's step
# time / its own, measured by bench.py in one call).
exec(open("config/bytes.py").read())
out_dir = "out-equal-time-bytes-every3-time"
_match_time_of = "gpt2_baseline_time"
