# CPU demo: a tiny GPT-2-tokenized model with a byte branch, on Shakespeare's plays, in a few minutes.
# python prepare.py && python train.py config/cpu_demo.py && python sample.py --out_dir=out-cpu-demo
data_dir = "data/shakespeare"
out_dir = "out-cpu-demo"
block_size = 128
n_layer, n_head, n_embd = 4, 4, 128
streams = [dict(tokenizer="bytes", n_layer=2, n_head=2, n_embd=64, window=64, budget=512,
                cross_layers=[0], locality=None)]
batch_size = 16
total_batch_size = 16 * 128
max_iters = 600
learning_rate, min_lr, warmup_iters = 2e-3, 2e-4, 50
eval_interval, eval_iters, log_interval = 100, 8, 20
device = "cpu"
