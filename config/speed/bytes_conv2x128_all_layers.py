# Speed sweep (bench.py): config/speed/bytes_conv1x128_all_layers.py with two convolution layers (each
# byte sees the 15 bytes up to it).
exec(open("config/speed/bytes_conv1x128_all_layers.py").read())
out_dir = "out-speed-bytes-conv2x128-all-layers"
streams = [dict(streams[0], n_layer=2)]
