# Speed sweep (bench.py): config/bytes_layer0.py with a one-layer byte GPT of width 256.
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_1x256"
streams = [dict(streams[0], n_layer=1, n_embd=256, n_head=4)]
