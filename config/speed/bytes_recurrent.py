# Speed sweep (bench.py): config/bytes_layer0.py with a byte GPT that mixes its bytes by a gated linear
# recurrence (minGRU) instead of windowed attention. Timed, not trained at this size.
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_recurrent"
streams = [dict(streams[0], mixer="recurrent")]
