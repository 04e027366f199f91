# GPT-2 small (12 layers, 768 wide, 1024 tokens) plus a byte branch read by main layer 0, on Gutenberg.
# At GPT-2 small (1,000 steps, 3 seeds) reading bytes in layer 0 alone showed no measurable effect;
# config/gpt2_bytes_all_layers.py did (README, Findings).
# python prepare.py --train 'gutenberg/train_0[0-3].jsonl.xz' --val gutenberg/val.jsonl.xz --out data/gutenberg
# python train.py config/gpt2_bytes.py          (torchrun --standalone --nproc_per_node=8 train.py ... for DDP)
data_dir = "data/gutenberg"
out_dir = "out-gpt2-bytes"
block_size = 1024
n_layer, n_head, n_embd = 12, 12, 768
# ~3.8 bytes per GPT-2 token on Gutenberg (3,817 per 1024-token window, at most ~4,900): a window keeps
# up to 6144 bytes; training packs a batch's bytes into 4096 per window on average (the log reports the
# tokens lost to the cap and dropped from the loss when a batch overflows)
# the byte GPT is 2 x 128 (d1 = n_embd / 6), the shape of the seeded study's bytes arm (README, Findings)
streams = [dict(tokenizer="bytes", n_layer=2, n_head=2, n_embd=128, window=256, budget=6144,
                packed_budget=4096, cross_layers=[0], locality=None)]
batch_size = 32
total_batch_size = 32 * 1024
max_iters = 3000
learning_rate, min_lr, warmup_iters = 1e-3, 1e-4, 200
eval_interval, eval_tokens, log_interval = 500, 20 * 32 * 1024, 50
