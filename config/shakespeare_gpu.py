# Shakespeare's plays (python prepare.py) on one GPU: a 6-layer GPT-2-tokenized model with a byte branch.
data_dir = "data/shakespeare"
out_dir = "out-shakespeare"
block_size = 256
n_layer, n_head, n_embd = 6, 6, 384
dropout = 0.1
# ~3.2 bytes per GPT-2 token in the plays (~820 per 256-token window): a window keeps up to 1024 bytes,
# and training packs 896 per window on average (the log reports tokens dropped when a batch overflows)
streams = [dict(tokenizer="bytes", n_layer=2, n_head=2, n_embd=128, window=128, budget=1024,
                packed_budget=896, cross_layers=[0], locality=None)]
batch_size = 64
total_batch_size = 64 * 256
max_iters = 2000
learning_rate, min_lr, warmup_iters = 1e-3, 1e-4, 100
eval_interval, eval_tokens, log_interval = 250, 20 * 64 * 256, 50
