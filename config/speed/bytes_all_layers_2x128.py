# Speed sweep (bench.py): width-128 bytes read by all 12 main layers.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-speed-bytes_all_layers_2x128"
streams = [dict(streams[0], n_embd=128, n_head=2, cross_layers="all")]
