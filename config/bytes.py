# The default byte config (train.py's DEFAULTS): config/baseline.py plus a one-layer byte GPT (1 x 128,
# window 256) whose bytes every third main layer (0, 3, 6, 9) reads, each token only its own (locality 0),
# through one shared key/value projection, beside the layer's self-attention. 1.07-1.085x the baseline's
# step time; at equal wall-clock it ties the baseline in domain and keeps the all-layers config's out-of-
# domain and letter gains (3 seeds, FINDINGS.md). config/bytes_all_layers.py: every layer reads, 1.135-1.14x.
exec(open("config/baseline.py").read())
out_dir = "out-bytes"
# ~3.8 bytes per GPT-2 token on Gutenberg (at most ~4,900 per 1024-token window): a window keeps up to 6144
# bytes; training packs a batch's bytes into 4096 per window on average
streams = [dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=128, window=256, budget=6144,
                packed_budget=4096, cross_layers="every3", locality=0, shared_kv=True, parallel=True)]
