# config/gpt2_bytes_all_layers_local0_shared_kv.py with each layer's cross-attention beside its
# self-attention (parallel): one normed input for both, their query projections as one matmul. The
# same parameters, another function (the bytes are read with the layer's input, not after its
# self-attention). 1.215x the baseline's step time, the cheapest config that reads bytes in every layer;
# at 1,000 steps (3 seeds) as useful in domain as the other k=0 configs, more so out of domain (README).
exec(open("config/gpt2_bytes_all_layers_local0_shared_kv.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0-shared-kv-parallel"
streams = [dict(streams[0], parallel=True)]
