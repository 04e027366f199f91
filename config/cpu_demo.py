# CPU demo: a tiny GPT-2-tokenized model with a byte branch, on Shakespeare's plays, in a few minutes.
# python prepare.py && python train.py config/cpu_demo.py && python sample.py --out_dir=out-cpu-demo
data_dir = "data/shakespeare"
out_dir = "out-cpu-demo"
block_size = 128
n_layer, n_head, n_embd = 4, 4, 128
# ~3.2 bytes per GPT-2 token in the plays: 512 bytes cover a 128-token window nearly always
streams = [dict(tokenizer="bytes", n_layer=2, n_head=2, n_embd=64, window=64, budget=512,
                cross_layers=[0], locality=None)]
batch_size = 8
total_batch_size = 8 * 128
max_iters = 250
learning_rate, min_lr, warmup_iters = 3e-3, 3e-4, 25
eval_interval, eval_tokens, log_interval = 50, 10 * 8 * 128, 10
device = "cpu"
