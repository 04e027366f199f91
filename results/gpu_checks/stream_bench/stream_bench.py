# Issue 8 probe: time the byte branch alone (run_stream: the byte GPT, rotary gathers, keys of the
# cross-attention; forward + backward) at gpt2_bytes' training batch under variants, round-robin
# (every variant compiled first, then timed in turns: clock drift hits all alike).
#   python results/gpu_checks/stream_bench/stream_bench.py config/gpt2_bytes.py --data_dir=data/g1t
import os, sys, time
sys.path.insert(0, os.getcwd())
import torch
import model as M
from data import Corpus
from model import GPT, batch_inputs
from train import Batches, model_setup, packs, parse_config

FLEX, ROPE, GATHER = M.flex_attention, M.apply_rope, M.gather_rope
cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"


def rope_in_input_dtype(x, cos, sin):  # probe: rotary applied in x's dtype (bf16), not float32
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def flex_with(options):  # the call site's options (FORCE_USE_FLEX_ATTENTION) merged with these
    def f(*a, kernel_options=None, **kw):
        merged = {**(kernel_options or {}), **options}
        return FLEX(*a, kernel_options={k: v for k, v in merged.items() if v is not None}, **kw)
    return f


ROW_TABLE = {}


def gather_row_phases(table, pos):
    """probe: self-attention phases at each element's index in the packed row, a slice, no gather.
    Rotary is relative and windows lie contiguous in the row, so scores are the same function."""
    if table is ROW_TABLE.get("t"):
        c = table[:, 0, :pos.size(1)]
        return c[0][None, None], c[1][None, None]
    return GATHER(table, pos)


VARIANTS = {  # name: (stream overrides, patches); flex options merge over
# those of model.attend's call (None drops one)
    "as is": ({}, {}),
    "BLOCK 64x64": ({}, dict(flex=dict(BLOCK_M=64, BLOCK_N=64))),
    "BLOCK 128x64": ({}, dict(flex=dict(BLOCK_M=128, BLOCK_N=64))),
    "warps 8 stages 3": ({}, dict(flex=dict(num_warps=8, num_stages=3))),
    # with flex_options.patch applied ("as is" then runs 8 warps, 3 stages), inductor's own choice
    "flex defaults": ({}, dict(flex=dict(num_warps=None, num_stages=None))),
    "row phases": ({}, dict(row=True)),
    "rotary in bf16": ({}, dict(rope=rope_in_input_dtype)),
    "1 head of 128": (dict(n_head=1), {}),
    "1 head + row phases": (dict(n_head=1), dict(row=True)),
}


def patch(p):
    M.apply_rope = p.get("rope", ROPE)
    M.flex_attention = flex_with(p["flex"]) if "flex" in p else FLEX
    M.gather_rope = gather_row_phases if p.get("row") else GATHER


def build(cfg, overrides, p):
    cfg = dict(cfg, streams=[dict(cfg["streams"][0], **overrides)])
    main_tok, side_toks, mc = model_setup(cfg)
    corpus = Corpus.load(cfg["data_dir"], "train", main_tok, side_toks)
    batches = Batches(corpus, cfg["block_size"], main_tok, side_toks, mc.streams, 0,
                      pack=packs(cfg, "flex" if cuda else "sdpa"))
    x = batch_inputs(batches.get(batches.positions(0, cfg["batch_size"])), dev)
    torch.manual_seed(0)
    m = GPT(mc).to(dev)
    m.attention = "flex" if cuda else "sdpa"
    side, tok_end = x["sides"][0], x["tok_end"]
    if p.get("row"):
        n = side["ids"].size(1)
        hd = mc.streams[0].n_embd // mc.streams[0].n_head  # float64 angles: rows reach 131K elements
        ang = torch.arange(n, dtype=torch.float64)[:, None] * 10000.0 ** (
            -torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        m.stream_rope0 = torch.stack([ang.cos(), ang.sin()]).float()[:, None].to(dev)
        ROW_TABLE["t"] = m.stream_rope0
        starts = (side["pos"] == 0)
        assert torch.equal(side["pos"][0], torch.arange(n, device=dev) - torch.cummax(
            torch.where(starts[0], torch.arange(n, device=dev), 0), 0).values), "windows not contiguous"

    def branch():
        lists = M.stream_block_lists([side], [(True, True)], compiled=True)[0] if cuda else (None, None)
        h, *_ = m.run_stream(0, side, tok_end, lists)
        return h
    fn = torch.compile(branch, dynamic=False) if cuda else branch

    def step():
        patch(p)
        with torch.autocast(dev, dtype=torch.bfloat16):
            h = fn()
        h.float().square().mean().backward()
        return h
    return step


if __name__ == "__main__":
    cfg, _ = parse_config(sys.argv[1:])
    only = os.environ.get("ONLY")
    steps = {}
    for name, (overrides, p) in VARIANTS.items():
        if only and name not in only.split(","):
            continue
        t = time.time()
        try:
            steps[name] = build(cfg, overrides, p)
            h = [steps[name]() for _ in range(3)][-1]
            if cuda:
                torch.cuda.synchronize()
            print(f"{name:>20}: built and warmed up in {time.time() - t:.0f} s; h[0, 1000:1003, :3] {h[0, 1000:1003, :3].tolist()}", flush=True)
        except Exception as e:  # one variant's compile error spoils no other
            print(f"{name:>20}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            steps.pop(name, None)
    times = {k: [] for k in steps}
    for _ in range(int(os.environ.get("ROUNDS", 6))):
        for name, step in steps.items():
            for _ in range(10):
                if cuda:
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record(); step(); b.record(); torch.cuda.synchronize(); times[name].append(a.elapsed_time(b))
                else:
                    t = time.time(); step(); times[name].append(1000 * (time.time() - t))
    for name, ts in times.items():
        ts.sort()
        print(f"{name:>20}: median {ts[len(ts) // 2]:6.3f} ms, p10 {ts[len(ts) // 10]:6.3f}, p90 {ts[9 * len(ts) // 10]:6.3f} (branch fwd+bwd, {len(ts)} steps)", flush=True)
