# Arm of the GPT-2-small study (results/gpt2_pair/): config/bytes_lean.py.
exec(open("config/bytes_lean.py").read())
out_dir = "out-gpt2-bytes-all-layers-local0-shared-kv-parallel"
