# config/gpt2_bytes.py with k=0 local cross-attention: each token reads only its own bytes.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-gpt2-bytes-local0"
streams = [dict(streams[0], locality=0)]
