# Study arm: the plain GPT, no byte branch (the arm the others are compared with).
exec(open("config/study/base/tasks_small.py").read())
streams = []
