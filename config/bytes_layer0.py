# config/bytes_full.py with the bytes read by main layer 0 alone: 1.12x the baseline's step time, and no
# measurable effect at GPT-2 small (FINDINGS.md). The base of the speed sweep, config/speed/.
exec(open("config/bytes_full.py").read())
out_dir = "out-bytes-layer0"
streams = [dict(streams[0], cross_layers=[0])]
