# config/bytes_own.py read by every third main layer (0, 3, 6, 9), a third of the cross-attentions: most of
# the in-domain and resegmentation gains, not the case ones; 1.195x (FINDINGS.md).
exec(open("config/bytes_own.py").read())
out_dir = "out-bytes-every3"
streams = [dict(streams[0], cross_layers=[0, 3, 6, 9])]
