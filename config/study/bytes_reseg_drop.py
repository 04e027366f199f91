# Study arm: bytes_reseg plus embedding dropout 0.1 (each token's embedding zeroed with probability 0.1 in
# training, constant): the token's identity must then sometimes come from its bytes alone.
exec(open("config/study/base/tasks_small.py").read())
resegment = 0.1
embed_dropout = 0.1
