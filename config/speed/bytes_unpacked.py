# Speed sweep (bench.py): config/bytes_layer0.py with one padded row of 6144 bytes per window (no packing).
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_unpacked"
streams = [dict(streams[0], packed_budget=0)]
