# config/gpt2_bytes_all_layers_local0_shared_kv.py with each layer's cross-attention beside its
# self-attention (parallel): one normed input for both, their query projections as one matmul. The
# same parameters, another function (the bytes are read with the layer's input, not after its
# self-attention). Aimed at issue 8's 1.20x for all 12 layers; not yet run on a GPU.
exec(open("config/gpt2_bytes_all_layers_local0_shared_kv.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0-shared-kv-parallel"
streams = [dict(streams[0], parallel=True)]
