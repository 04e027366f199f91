# config/baseline.py plus a byte GPT (2 layers x 128, window 256) whose bytes every main layer reads by
# cross-attention, all bytes up to each token's own. The largest gains in and out of domain, under noise and
# on character tasks, at 1.39x the baseline's step time (FINDINGS.md); config/bytes.py is the cheap default.
exec(open("config/baseline.py").read())
out_dir = "out-bytes-full"
# ~3.8 bytes per GPT-2 token on Gutenberg (at most ~4,900 per 1024-token window): a window keeps up to 6144
# bytes; training packs a batch's bytes into 4096 per window on average (the log reports the tokens lost to
# the cap, and those dropped from the loss when a batch overflows)
streams = [dict(tokenizer="bytes", n_layer=2, n_head=2, n_embd=128, window=256, budget=6144,
                packed_budget=4096, cross_layers="all", locality=None)]
