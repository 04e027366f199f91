# Speed sweep (bench.py): config/bytes_layer0.py with a byte GPT of width 192 (2 x 192).
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_2x192"
streams = [dict(streams[0], n_embd=192, n_head=3)]
