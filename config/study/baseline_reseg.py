# Study arm: the baseline trained on resegmented text: 10% of multi-byte tokens cut in two (same bytes),
# the fair partner of bytes_reseg (same data augmentation, no bytes to read).
exec(open("config/study/base/tasks_small.py").read())
streams = []
resegment = 0.1
