# config/bytes_own.py made cheaper: one key/value projection of the bytes for all layers (shared_kv), and
# cross-attention beside self-attention on the same normed input, their query projections fused (parallel;
# the same parameters, another function). The cheapest 2 x 128 config that helps: 1.215-1.23x the
# baseline's step time, as good in domain as config/bytes_own.py, better out of domain (FINDINGS.md).
exec(open("config/bytes_own.py").read())
out_dir = "out-bytes-lean"
streams = [dict(streams[0], shared_kv=True, parallel=True)]
