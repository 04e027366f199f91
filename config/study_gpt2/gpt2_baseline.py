# Arm of the GPT-2-small study (results/gpt2_pair/): config/baseline.py under its study name.
exec(open("config/baseline.py").read())
out_dir = "out-gpt2-baseline"
