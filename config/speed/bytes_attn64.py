# Speed sweep (bench.py): the default (config/bytes.py, layers 0, 3, 6 and 9 read each token's own bytes)
# with a byte GPT half as wide, one head of 64, that still mixes bytes by attention over a window of 256:
# what the width alone saves, beside config/speed/bytes_conv64.py (the same width mixed by a convolution).
exec(open("config/bytes.py").read())
out_dir = "out-speed-bytes-attn64"
streams = [dict(streams[0], n_embd=64, n_head=1)]
