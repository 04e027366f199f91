# Speed sweep (bench.py): config/gpt2_bytes.py with one padded row of 6144 bytes per window (no packing).
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-speed-bytes_unpacked"
streams = [dict(streams[0], packed_budget=0)]
