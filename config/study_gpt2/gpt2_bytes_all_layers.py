# Arm of the GPT-2-small study (results/gpt2_pair/): config/bytes_full.py (bytes read by every layer).
exec(open("config/bytes_full.py").read())
out_dir = "out-gpt2-bytes-all-layers"
