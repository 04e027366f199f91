# Speed sweep (bench.py): config/bytes.py with its own-bytes cross-attention by kernels.py (own_kernel), the
# same function: the A/B of the kernel against the PyTorch path, in one call.
exec(open("config/bytes.py").read())
out_dir = "out-speed-bytes-kernel"
own_kernel = True
