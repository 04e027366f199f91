# Study arm: k=0 local cross-attention: each token reads only its own bytes.
exec(open("config/study/base/tasks_small.py").read())
streams = [dict(streams[0], locality=0)]
