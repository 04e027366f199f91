# Speed sweep (bench.py): the default (config/bytes.py, layers 0, 3, 6 and 9 read the bytes) with a byte GPT
# half as wide (one head of 64) that mixes bytes by a short causal convolution (mixer="conv") instead of
# windowed attention. 1.035x the baseline's step time on an H200 (results/default_cost/). At equal wall-clock
# (config/equal_time/gpt2_bytes_conv64_time.py, 3 seeds) it beats the baseline in domain but loses the
# default's Wikipedia gain (results/equal_time/).
exec(open("config/bytes.py").read())
out_dir = "out-speed-bytes-conv64"
streams = [dict(streams[0], mixer="conv", conv_width=8, n_embd=64, n_head=1)]
