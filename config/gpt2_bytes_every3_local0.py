# config/gpt2_bytes_all_layers_local0.py with cross-attention in every third main layer (0, 3, 6, 9):
# a third of its cross-attentions. 1.195x the baseline's step time; at 1,000 steps (3 seeds) most of the
# all-layers in-domain and resegmentation gains, not the case ones (README, Findings and Results).
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-gpt2-bytes-every3-local0"
streams = [dict(streams[0], cross_layers=[0, 3, 6, 9], locality=0)]
