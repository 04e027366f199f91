# Three streams: GPT-2 main, plus bytes and cl100k_base side streams, both read by main layer 0.
# Data as for config/gpt2_cl100k.py (prepare.py ... --side cl100k_base).
exec(open("config/gpt2_cl100k.py").read())
out_dir = "out-bytes-gpt2-cl100k"
_BYTES = dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=256, window=256, budget=6144,
              packed_budget=4096, cross_layers=[0], locality=None)
# the byte GPT that config/gpt2_bytes.py had before it became 2 x 128 (2 x 256, 4 heads), as README,
# "What each side stream costs", timed it; packed as in config/gpt2_bytes.py
streams = [_BYTES, _CL100K]
