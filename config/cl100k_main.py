# A cl100k_base main stream with a byte side stream read by layer 0: the main tokenizer is a choice too.
# python prepare.py --train 'gutenberg/train_0[0-3].jsonl.xz' --val gutenberg/val.jsonl.xz --out data/gutenberg_cl100k --tokenizer cl100k_base
exec(open("config/baseline.py").read())
data_dir = "data/gutenberg_cl100k"
out_dir = "out-cl100k-main"
tokenizer = "cl100k_base"
# ~4 bytes per cl100k token: 6144 bytes still cover a 1024-token window nearly always
streams = [dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=256, window=256, budget=6144,
                cross_layers=[0], locality=None)]
