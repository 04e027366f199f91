# config/bytes_full.py with each token reading only its own bytes (locality 0), a fraction of the keys: as good
# in domain and under resegmentation, little of the case robustness; 1.30x (FINDINGS.md).
exec(open("config/bytes_full.py").read())
out_dir = "out-bytes-own"
streams = [dict(streams[0], locality=0)]
