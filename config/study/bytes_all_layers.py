# Study arm: cross-attention to the bytes in every main layer.
exec(open("config/study/base/tasks_small.py").read())
streams = [dict(streams[0], cross_layers="all")]
