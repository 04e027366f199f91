# Speed sweep (bench.py): config/gpt2_bytes.py with a one-layer byte GPT of width 128.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-speed-bytes_1x128"
streams = [dict(streams[0], n_layer=1, n_embd=128, n_head=2)]
