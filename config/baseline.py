# The baseline: GPT-2 small (12 layers, 768 wide, 1024 tokens) on Gutenberg, no byte branch. Every byte
# config below adds a byte branch to this run and is measured against it.
# python prepare.py --train 'gutenberg/train_0[0-3].jsonl.xz' --val gutenberg/val.jsonl.xz --out data/gutenberg
# python train.py config/baseline.py          (torchrun --standalone --nproc_per_node=8 train.py ... for DDP)
data_dir = "data/gutenberg"
out_dir = "out-baseline"
block_size = 1024
n_layer, n_head, n_embd = 12, 12, 768
streams = []
batch_size = 32
total_batch_size = 32 * 1024
max_iters = 3000
learning_rate, min_lr, warmup_iters = 1e-3, 1e-4, 200
eval_interval, eval_tokens, log_interval = 500, 20 * 32 * 1024, 50
