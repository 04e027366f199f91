# Arm of the equal-wall-clock study (issue 29; command in gpt2_baseline_time.py): config/speed/bytes_conv64.py
# (the default with a 64-wide byte GPT that mixes by a short convolution) trained as long as
# gpt2_baseline_time's steps take. Its step-time ratio is the one results/default_cost/ measured (H200,
# config/baseline.py beside it in one call), entered in results/equal_time/time_match.json.
exec(open("config/speed/bytes_conv64.py").read())
out_dir = "out-equal-time-bytes-conv64-time"
_match_time_of = "gpt2_baseline_time"
