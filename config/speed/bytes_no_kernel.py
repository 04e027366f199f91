# Speed sweep (bench.py): config/bytes_all_layers.py with its own-bytes cross-attention by gathers and
# scatter-adds in PyTorch instead of kernels.py (own_kernel=False): the same function, the kernel's A/B in
# one call.
exec(open("config/bytes_all_layers.py").read())
out_dir = "out-speed-bytes-no-kernel"
own_kernel = False
