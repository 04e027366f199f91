# Speed sweep (bench.py): config/speed/bytes_conv64.py read by layers 0, 4 and 8: 1.030x (H200); untrained
# (bytes_conv64.py itself, read by every third layer, is trained in results/equal_time/).
exec(open("config/speed/bytes_conv64.py").read())
out_dir = "out-speed-bytes-conv64-every4"
streams = [dict(streams[0], cross_layers="every4")]
