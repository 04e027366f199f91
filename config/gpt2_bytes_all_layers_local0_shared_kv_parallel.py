# config/gpt2_bytes_all_layers_local0_shared_kv.py with each layer's cross-attention beside its
# self-attention (parallel): one normed input, the query projections as one matmul and the output
# projections as another, and no second residual add. The same parameters, another function (the
# bytes are read with the layer's input). Aimed at issue 8's 1.20x for all 12 layers; not yet run on a GPU.
exec(open("config/gpt2_bytes_all_layers_local0_shared_kv.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0-shared-kv-parallel"
streams = [dict(streams[0], parallel=True)]
