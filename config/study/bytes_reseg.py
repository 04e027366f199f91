# Study arm: the byte branch, trained on resegmented text (10% of multi-byte tokens cut into two tokens, same
# bytes): odd segmentations are where token ids say little and the bytes say everything.
exec(open("config/study/base/tasks_small.py").read())
resegment = 0.1
