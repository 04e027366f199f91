# Speed sweep (bench.py): config/bytes_lean.py with a one-layer byte GPT of width 128
# (config/speed/bytes_1x128.py's branch): the cheapest way found to read bytes in every layer: 1.17-1.19x
# the baseline's step time, the only config under issue 8's 1.20x in all twelve layers.
# Trained (3 seeds, README Findings) it keeps the 2 x 128 config's in-domain, resegmentation and
# last-letter gains, not its case robustness.
exec(open("config/bytes_lean.py").read())
out_dir = "out-speed-bytes_1x128_all_layers_local0_shared_kv_parallel"
streams = [dict(streams[0], n_layer=1)]
