# Arm of the GPT-2-small study (results/gpt2_pair/): config/bytes_layer0.py (bytes read by layer 0).
exec(open("config/bytes_layer0.py").read())
out_dir = "out-gpt2-bytes"
