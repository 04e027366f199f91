# train.py with per-group gradient norms (diagnosis of the byte runs' gradient spikes). From the
# repository root: python results/flex_gradient_bug/diag.py CONFIG [--key=value ...] (train.py's
# arguments); prints "GN step total | group norm ..." at every 25th step and whenever the total is > 2.
# The logs here: config/study/bytes_aux.py --max_iters=400 --eval_interval=100000 --seed=1, with
# --dtype=float32, --attention=sdpa or packed_budget=0 as their names say (commit 14d83d8).
import os, sys; sys.path.insert(0, os.getcwd())
import re, sys, runpy, torch, model
_models, _n = [], [0]
_init = model.GPT.__init__
def init(self, *a, **k):
    _init(self, *a, **k); _models.append(self)
model.GPT.__init__ = init
_clip = torch.nn.utils.clip_grad_norm_
def group(name):
    if name.startswith("streams."):
        return "side." + ("wte" if ".wte" in name else re.sub(r"^streams\.\d+\.blocks\.\d+\.", "", name).split(".")[0])
    if ".cross." in name:
        return "main.cross." + name.split(".cross.")[1].split(".")[1]
    return "main.wte" if name.startswith("wte") else "main.blocks"
def clip(params, max_norm, *a, **k):
    m = _models[-1]; sq = {}
    for n, p in m.named_parameters():
        if p.grad is not None:
            sq[group(n)] = sq.get(group(n), 0.0) + p.grad.float().pow(2).sum()
    total = _clip(params, max_norm, *a, **k)
    _n[0] += 1
    t = float(total)
    if t > 2 or _n[0] % 25 == 0:
        print(f"GN {_n[0]} total {t:.2f} | " + " ".join(f"{g} {float(v)**0.5:.2f}" for g, v in sorted(sq.items())), flush=True)
    return total
torch.nn.utils.clip_grad_norm_ = clip
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
