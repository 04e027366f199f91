# Speed sweep (bench.py): config/speed/bytes_attn64.py with its windows chunk by chunk (chunked_windows=True):
# the same function.
exec(open("config/speed/bytes_attn64.py").read())
out_dir = "out-speed-bytes-attn64-chunked"
chunked_windows = True
