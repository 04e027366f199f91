# Speed sweep (bench.py): config/bytes_layer0.py with each token reading only its own bytes (locality 0).
exec(open("config/bytes_layer0.py").read())
out_dir = "out-speed-bytes_local0"
streams = [dict(streams[0], locality=0)]
