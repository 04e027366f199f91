# Probe demo (evaluate.py): a small GPT-2-tokenized model with a byte branch, trained on Gutenberg with
# character-task documents (spelling, counting, editing letters; train words only) as 5% of the tokens.
# python prepare.py --train 'gutenberg/train_0[0-3].jsonl.xz' --val gutenberg/val.jsonl.xz --out data/gutenberg_tasks --tasks_fraction 0.05
# (FINDINGS.md, results/tasks_small/: the two models side by side on one H200, 4000 steps of 32K tokens, 3-4 min each)
# python train.py config/tasks_small_bytes.py && python train.py config/tasks_small_baseline.py
# python evaluate.py out-tasks-small-baseline out-tasks-small-bytes --text data/gutenberg_tasks --dtype bfloat16
data_dir = "data/gutenberg_tasks"
out_dir = "out-tasks-small-bytes"
block_size = 1024
n_layer, n_head, n_embd = 6, 6, 384
# ~3.7 bytes per token (~3,770 per window): training packs 4096 bytes per window on average
streams = [dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=128, window=256, budget=6144,
                packed_budget=4096, cross_layers=[0], locality=None)]
batch_size = 32
total_batch_size = 32 * 1024
max_iters = 4000
learning_rate, min_lr, warmup_iters = 1.5e-3, 1.5e-4, 150
eval_interval, eval_tokens, log_interval = 500, 20 * 32 * 1024, 50
