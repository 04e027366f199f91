# Three streams: GPT-2 main, plus bytes and cl100k_base side streams, both read by main layer 0.
# Data as for config/cl100k_side.py (prepare.py ... --side cl100k_base).
exec(open("config/cl100k_side.py").read())
out_dir = "out-bytes-cl100k"
# a 2 x 256 byte GPT (4 heads), the size its step time was measured with (FINDINGS.md)
_BYTES = dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=256, window=256, budget=6144,
              packed_budget=4096, cross_layers=[0], locality=None)
streams = [_BYTES, _CL100K]
