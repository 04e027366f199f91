# Speed sweep (bench.py): config/speed/bytes_1x128.py with a 128-byte attention window: each block of 128
# byte queries then reads 2 key blocks instead of 3 (FlexAttention was 4.7 ms of the byte branch's 9.2 ms
# in the H200 profile, results/speed_attempts/). Timed with the wrong-gradient block lists only (FINDINGS.md).
exec(open("config/speed/bytes_1x128.py").read())
out_dir = "out-speed-bytes_1x128_w128"
streams = [dict(streams[0], window=128)]
