# Arm of the equal-wall-clock study (issue 29; command in gpt2_baseline_time.py): the default byte config,
# config/bytes.py; its three seeds are results/gpt2_pair's speed/bytes_1x128_all_layers_local0_shared_kv_parallel
# runs, the same config.
exec(open("config/bytes.py").read())
out_dir = "out-equal-time-bytes"
