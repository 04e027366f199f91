# Speed sweep (bench.py): config/bytes_layer0.py with its byte GPT's heads merged, 1 of 128 in place of 2 of 64
# (self-attention and the cross-attention into bytes): the byte branch alone timed 0.5-0.9 ms faster
# in three H200 calls (results/gpu_checks/stream_bench/). Not yet trained.
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_2x128_1head"
streams = [dict(streams[0], n_head=1)]
