# The baseline for config/tasks_small_bytes.py: the same small model and data without the byte branch.
exec(open("config/tasks_small_bytes.py").read())
out_dir = "out-tasks-small-baseline"
streams = []
