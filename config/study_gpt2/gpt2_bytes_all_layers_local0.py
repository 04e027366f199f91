# Arm of the GPT-2-small study (results/gpt2_pair/): config/bytes_own.py (every layer, own bytes only).
exec(open("config/bytes_own.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0"
