# Arm of the GPT-2-small study (results/gpt2_pair/): config/bytes_every3.py (layers 0, 3, 6, 9, own bytes).
exec(open("config/bytes_every3.py").read())
out_dir = "out-gpt2-bytes-every3-local0"
