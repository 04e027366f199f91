# Study arm: the default byte branch, whose byte GPT is also trained as a byte language model (its own
# next-byte loss, weight 0.2, beside the token loss): its states must then know the bytes ahead of them.
exec(open("config/study/base/tasks_small.py").read())
streams = [dict(streams[0], aux_loss=0.2)]
