# Speed sweep (bench.py): config/bytes.py with its byte GPT's sliding windows computed by FlexAttention
# block masks (chunked_windows=False) instead of chunk by chunk in one batched SDPA (attention.SlidingWindow,
# the default wherever flex runs): the same function, the A/B in one call.
exec(open("config/bytes.py").read())
out_dir = "out-speed-bytes-flex-windows"
chunked_windows = False
