# config/gpt2_bytes.py with a recurrent byte stream: a gated linear scan (minGRU) instead of windowed attention.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-gpt2-bytes-recurrent"
streams = [dict(streams[0], mixer="recurrent")]
