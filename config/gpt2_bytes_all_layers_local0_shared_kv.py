# config/gpt2_bytes_all_layers_local0.py with one key/value projection of the bytes, computed once and
# read by every layer (shared_kv): each layer keeps its own query and output projections. Most of what
# a cross-attention costs lies outside its attention kernel (README, Results); this removes eleven of
# the twelve key/value projections over 131K bytes a step: 1.23x the baseline's step time against 1.28x
# (README, Results); timed, not trained.
exec(open("config/gpt2_bytes_all_layers_local0.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0-shared-kv"
streams = [dict(streams[0], shared_kv=True)]
