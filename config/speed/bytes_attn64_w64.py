# Speed sweep (bench.py): config/speed/bytes_attn64.py with a window of 64 bytes (about 16 tokens) instead
# of 256, chunk by chunk (chunked_windows=True): each element's keys span two chunks of 64 instead of five.
exec(open("config/speed/bytes_attn64.py").read())
out_dir = "out-speed-bytes-attn64-w64"
streams = [dict(streams[0], window=64)]
chunked_windows = True
