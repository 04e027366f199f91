# Speed sweep (bench.py): config/bytes_own.py with one key/value projection of the bytes for all layers
# (shared_kv), computed once: most of what a cross-attention costs lies outside its attention kernel.
# config/bytes_lean.py without its parallel cross-attention; timed, not trained.
exec(open("config/bytes_own.py").read())
out_dir = "out-speed-bytes_all_layers_local0_shared_kv"
streams = [dict(streams[0], shared_kv=True)]
