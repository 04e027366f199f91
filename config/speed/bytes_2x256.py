# Speed sweep (bench.py): config/gpt2_bytes.py with the byte GPT it had until 2026-11-29 (2 x 256).
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-speed-bytes_2x256"
streams = [dict(streams[0], n_embd=256, n_head=4)]
