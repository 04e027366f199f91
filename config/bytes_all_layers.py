# config/bytes.py read by all twelve main layers instead of every third: the default until the equal-wall-
# clock study (3 seeds: -0.0155 val bpb at equal tokens, resegmentation and last-letter gains), 1.135-1.14x
# the baseline's step time; the same run as config/speed/bytes_1x128_all_layers_local0_shared_kv_parallel.py.
# config/bytes_full.py reads all earlier bytes with a 2 x 128 byte GPT: larger effects, 1.39x.
exec(open("config/bytes.py").read())
out_dir = "out-bytes-all-layers"
streams = [dict(streams[0], cross_layers="all")]
