# Speed sweep (bench.py): config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py with one head of
# 128 in the byte GPT and the cross-attention into it (config/speed/bytes_2x128_1head.py's change). Not yet trained.
exec(open("config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py").read())
out_dir = "out-speed-bytes_1x128_1head_all_layers_local0_shared_kv_parallel"
streams = [dict(streams[0], n_head=1)]
