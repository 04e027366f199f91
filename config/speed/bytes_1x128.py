# Speed sweep (bench.py): config/bytes_layer0.py with a one-layer byte GPT of width 128.
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_1x128"
streams = [dict(streams[0], n_layer=1, n_embd=128, n_head=2)]
