# Speed sweep (bench.py): config/bytes_layer0.py with a 2 x 256 byte GPT (4 heads).
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_2x256"
streams = [dict(streams[0], n_embd=256, n_head=4)]
