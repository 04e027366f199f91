# Speed sweep (bench.py): config/gpt2_bytes.py with a byte GPT of width 128.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-speed-bytes_2x128"
streams = [dict(streams[0], n_embd=128, n_head=2)]
