# Study arm: the baseline matched in wall-clock to the bytes arm: it gets the steps the byte branch costs.
# lab/study.py scales max_iters by the bytes arm's step time over this arm's, both measured alone by bench.py
# before training (kept in OUT/time_match.json). The learning-rate schedule stretches with max_iters.
exec(open("config/study/base/tasks_small.py").read())
streams = []
_match_time_of = "bytes"
