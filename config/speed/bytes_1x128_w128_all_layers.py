# Speed sweep (bench.py): config/speed/bytes_1x128_w128.py with cross-attention in all 12 main layers.
exec(open("config/speed/bytes_1x128_w128.py").read())
out_dir = "out-speed-bytes_1x128_w128_all_layers"
streams = [dict(streams[0], cross_layers="all")]
