# config/baseline.py with a cl100k_base side stream instead of bytes, read by main layer 0: does a larger
# vocabulary help?
# python prepare.py --train 'gutenberg/train_0[0-3].jsonl.xz' --val gutenberg/val.jsonl.xz --out data/gutenberg --side cl100k_base
exec(open("config/baseline.py").read())
out_dir = "out-cl100k-side"
# ~0.95 cl100k tokens per GPT-2 token on Gutenberg: 1280 elements cover a 1024-token window.
# The side embedding table (100,277 x 128) is most of this stream's parameters.
_CL100K = dict(tokenizer="cl100k_base", n_layer=2, n_head=2, n_embd=128, window=128, budget=1280,
               cross_layers=[0], locality=None)
streams = [_CL100K]
