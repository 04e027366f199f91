# Speed sweep (bench.py): config/gpt2_bytes_all_layers_local0_shared_kv_parallel.py with a one-layer byte
# GPT of width 128 (config/speed/bytes_1x128.py's branch): the cheapest way found to read bytes in every
# layer: 1.19x the baseline's step time. Its usefulness is not yet measured (README, Results).
exec(open("config/gpt2_bytes_all_layers_local0_shared_kv_parallel.py").read())
out_dir = "out-speed-bytes_1x128_all_layers_local0_shared_kv_parallel"
streams = [dict(streams[0], n_layer=1)]
