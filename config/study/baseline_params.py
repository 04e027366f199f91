# Study arm: the baseline matched in parameters to the bytes arm. One more layer, narrower to fit:
# 7 x 372 (6 heads of 62) has 30,337,344 parameters, the bytes arm 30,490,624 (-0.50%; the plain
# baseline, 6 x 384, has 29,933,568: -1.83%). Counted with model.py: sum of GPT(...).parameters().
exec(open("config/study/base/tasks_small.py").read())
streams = []
n_layer, n_head, n_embd = 7, 6, 372
