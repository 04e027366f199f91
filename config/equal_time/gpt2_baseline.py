# Arm of the equal-wall-clock study (issue 29; command in gpt2_baseline_time.py): config/baseline.py, 1,000
# steps; its three seeds are results/gpt2_pair's gpt2_baseline runs.
exec(open("config/baseline.py").read())
out_dir = "out-equal-time-baseline"
