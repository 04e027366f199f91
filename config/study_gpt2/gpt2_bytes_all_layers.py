# Arm of the GPT-2-small study (results/gpt2_pair/): config/bytes.py (bytes read by every layer).
exec(open("config/bytes.py").read())
out_dir = "out-gpt2-bytes-all-layers"
