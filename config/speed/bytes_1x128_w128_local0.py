# Speed sweep (bench.py): config/speed/bytes_1x128_w128.py with k=0 local cross-attention (own bytes only).
exec(open("config/speed/bytes_1x128_w128.py").read())
out_dir = "out-speed-bytes_1x128_w128_local0"
streams = [dict(streams[0], locality=0)]
