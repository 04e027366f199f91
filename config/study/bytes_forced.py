# Study arm, PLACEHOLDER for the best option of issue 9, section 2: the byte branch, with each token's
# embedding zeroed with probability 0.3 in training (train.py's embed_dropout), so that its identity must
# come from its bytes. Replace with the recommended section-2 setting (schedule, mix) once measured.
exec(open("config/study/base/tasks_small.py").read())
embed_dropout = 0.3
