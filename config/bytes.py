# The default byte config (train.py's DEFAULTS): config/baseline.py plus a one-layer byte GPT (1 x 128,
# window 256) whose bytes every main layer reads, each token only its own (locality 0), through one shared
# key/value projection, beside each layer's self-attention. The cheapest config whose gains were measured
# (3 seeds: -0.0155 val bpb, resegmentation and last-letter gains, FINDINGS.md); the same run as
# config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py. config/bytes_full.py reads all
# earlier bytes with a 2 x 128 byte GPT: larger effects, 1.39x the step time.
exec(open("config/baseline.py").read())
out_dir = "out-bytes"
# ~3.8 bytes per GPT-2 token on Gutenberg (at most ~4,900 per 1024-token window): a window keeps up to 6144
# bytes; training packs a batch's bytes into 4096 per window on average
streams = [dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=128, window=256, budget=6144,
                packed_budget=4096, cross_layers="all", locality=0, shared_kv=True, parallel=True)]
