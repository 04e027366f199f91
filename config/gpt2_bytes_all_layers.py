# config/gpt2_bytes.py with cross-attention to the bytes in every main layer.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-gpt2-bytes-all-layers"
streams = [dict(streams[0], cross_layers="all")]
