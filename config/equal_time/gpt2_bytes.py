# Arm of the equal-wall-clock study (issue 29; command in gpt2_baseline_time.py): the byte config read by
# every layer, config/bytes_all_layers.py (the default until this study); its three seeds are
# results/gpt2_pair's speed/bytes_1x128_all_layers_local0_shared_kv_parallel runs, the same config.
exec(open("config/bytes_all_layers.py").read())
out_dir = "out-equal-time-bytes"
