# Study arm: the baseline matched in parameters to bytes_all_layers. One more layer, wider than
# baseline_params: 7 x 380 (5 heads of 76) has 31,245,120 parameters, bytes_all_layers 31,145,984
# (+0.32%). Counted with model.py: sum of GPT(...).parameters().
exec(open("config/study/base/tasks_small.py").read())
streams = []
n_layer, n_head, n_embd = 7, 5, 380
