# Speed sweep (bench.py): config/bytes_all_layers.py (1 x 128, own bytes, every layer) with its byte GPT
# mixing bytes by a short causal convolution over 8 bytes (mixer="conv") instead of windowed self-attention:
# no FlexAttention and no block lists at all, and each token reads its own bytes through kernels.py.
exec(open("config/bytes_all_layers.py").read())
out_dir = "out-speed-bytes-conv1x128-all-layers"
streams = [dict(streams[0], mixer="conv", conv_width=8)]
