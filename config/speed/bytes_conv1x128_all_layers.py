# Speed sweep (bench.py): the 1 x 128 all-layers config
# (config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py) with its byte GPT mixing bytes by a
# short causal convolution over 8 bytes (mixer="conv") instead of windowed self-attention: no FlexAttention
# and no block lists at all (each token reads its own bytes through kernels.py on a GPU).
exec(open("config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py").read())
out_dir = "out-speed-bytes-conv1x128-all-layers"
streams = [dict(streams[0], mixer="conv", conv_width=8)]
