# The shared base of the study arms (config/study/*.py exec this file; it lives in a subfolder so that the
# glob config/study/*.py selects the arms alone): the small task model of config/tasks_small_bytes.py with
# 512-token windows and fewer, smaller steps, so that 7 arms x 3 seeds train at once on one H200 (README,
# Findings, says how long). Data, Gutenberg with 5% character-task documents:
# python prepare.py --train 'gutenberg/train_0[0-2].jsonl.xz' --val gutenberg/val.jsonl.xz --out data/gutenberg_tasks --tasks_fraction 0.05
data_dir = "data/gutenberg_tasks"
block_size = 512
n_layer, n_head, n_embd = 6, 6, 384
# ~3.7 bytes per token: a window keeps up to 3072 bytes; training packs 2176 per window on average
# (train.log reports the tokens dropped when a batch overflows)
streams = [dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=128, window=256, budget=3072,
                packed_budget=2176, cross_layers=[0], locality=None)]
batch_size = 32
total_batch_size = 32 * 512
max_iters = 1000                   # 16.4M tokens a run
learning_rate, min_lr, warmup_iters = 1.5e-3, 1.5e-4, 100
eval_interval, eval_tokens, log_interval = 100, 20 * 32 * 512, 25
