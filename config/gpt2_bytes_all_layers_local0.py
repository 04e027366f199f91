# config/gpt2_bytes.py with cross-attention in every main layer, each token reading only its own bytes
# (k=0): every layer can consult the bytes, at a fraction of the keys of config/gpt2_bytes_all_layers.py.
# At 1,000 steps (3 seeds): the best in-domain bpb of the GPT-2 configs, resegmentation robustness, but
# little case robustness; 1.30x the baseline's step time (README, Findings and Results).
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0"
streams = [dict(streams[0], cross_layers="all", locality=0)]
