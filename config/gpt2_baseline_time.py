# The GPT-2-small baseline matched in wall-clock to config/gpt2_bytes_all_layers.py, for study.py's GPT-2 pair
# (README, Findings): study.py scales max_iters by the all-layers config's step time over this one's.
exec(open("config/gpt2_baseline.py").read())
out_dir = "out-gpt2-baseline-time"
_match_time_of = "gpt2_bytes_all_layers"
