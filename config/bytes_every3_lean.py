# config/bytes.py (the default) read by every third main layer (0, 3, 6, 9) instead of all twelve: a third of
# the reading layers' cost, kept for the equal-wall-clock question (FINDINGS.md).
exec(open("config/bytes.py").read())
out_dir = "out-bytes-every3-lean"
streams = [dict(streams[0], cross_layers=[0, 3, 6, 9])]
