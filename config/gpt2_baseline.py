# The plain GPT-2-small baseline for config/gpt2_bytes.py: the same run with the byte branch switched off.
exec(open("config/gpt2_bytes.py").read())
out_dir = "out-gpt2-baseline"
streams = []
