# Study arm: today's default byte branch (2 x 128, window 256) read by main layer 0.
exec(open("config/study/base/tasks_small.py").read())
