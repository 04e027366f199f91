# Speed sweep (bench.py): config/speed/bytes_attn64.py (a 64-wide attention byte GPT, window 256) read by
# layers 0, 4 and 8 instead of 0, 3, 6 and 9: one reading layer fewer, as bytes_conv64_every4.py is to
# bytes_conv64.py (1.030x against 1.035x on an H200).
exec(open("config/speed/bytes_attn64.py").read())
out_dir = "out-speed-bytes-attn64-every4"
streams = [dict(streams[0], cross_layers="every4")]
