# Study arm: the default byte branch with 3x the learning rate for the byte GPT and the cross-attention
# (branch_lr_scale): the branch starts as a no-op (zero output projection) and may learn too slowly.
exec(open("config/study/base/tasks_small.py").read())
branch_lr_scale = 3.0
