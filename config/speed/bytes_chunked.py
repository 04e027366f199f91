# Speed sweep (bench.py): config/bytes.py with its byte GPT's sliding windows computed chunk by chunk in one
# batched SDPA (chunked_windows=True, attention.sliding_window) instead of FlexAttention block masks: the same
# function, the A/B in one call.
exec(open("config/bytes.py").read())
out_dir = "out-speed-bytes-chunked"
chunked_windows = True
