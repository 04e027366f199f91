# Where do compiled-flex gradients differ from SDPA on a real training batch? fp32, per parameter group.
# From the repository root, on a GPU (prepared data in the config's data_dir):
#   python results/flex_gradient_bug/gradcheck.py config/study/bytes.py [--key=value ...]
#   env: B (windows, default 8), PACKS ("10": packed then unpacked), ONLY (variant names to run)
# Prints, per layout and variant, the largest |gradient difference| / largest |gradient| of each group.
# gradcheck_b8.log ran at commit 14d83d8, where model.interval_block_mask (variant "flex_compiled")
# was the range-arithmetic construction; "compiled_torch_transpose" is the construction model.py has now.
import os, sys; sys.path.insert(0, os.getcwd())
import torch
from torch.nn.attention.flex_attention import BlockMask
import model as M
from data import Corpus
from model import GPT, batch_inputs
from train import Batches, model_setup, parse_config

cfg, _ = parse_config([sys.argv[1]] + sys.argv[2:])
main_tok, side_toks, mc = model_setup(cfg)
corpus = Corpus.load(cfg["data_dir"], "train", main_tok, side_toks)
orig_mask = M.interval_block_mask
FB = M.FLEX_BLOCK

def dense_blocks(lo, hi, kv_len):
    R, Q = lo.shape
    nq, nk = -(-Q // FB), -(-kv_len // FB)
    pad = lambda t: torch.cat([t, t[:, -1:].expand(R, nq * FB - Q)], 1)
    lo_p, hi_p = pad(lo), pad(hi)
    lo_b, hi_b = lo_p.view(R, nq, FB), hi_p.view(R, nq, FB)
    # exact per-block visibility from the intervals
    kb = torch.arange(nk, device=lo.device)
    k0, k1 = kb * FB, torch.clamp((kb + 1) * FB, max=kv_len)
    touch = (lo_b[..., :, None] < k1) & (hi_b[..., :, None] > k0)  # (R,nq,FB,nk)
    touch = touch & (hi_b > lo_b)[..., None]
    full = (lo_b[..., :, None] <= k0) & (hi_b[..., :, None] >= k1)
    mask_mod = lambda b, h, q, kv: (kv >= lo_p[b, q]) & (kv < hi_p[b, q])
    return touch.any(2), full.all(2), mask_mod, (Q, kv_len)

def lists(m):
    m = m[:, None].to(torch.int32)
    return m.sum(-1).to(torch.int32), torch.argsort(m, dim=-1, descending=True, stable=True).to(torch.int32)

def torch_transpose(lo, hi, kv_len):
    some, full, mm, sl = dense_blocks(lo, hi, kv_len)
    return BlockMask.from_kv_blocks(*lists(some & ~full), *lists(full), BLOCK_SIZE=FB, mask_mod=mm, seq_lengths=sl)

def no_full(lo, hi, kv_len):
    some, full, mm, sl = dense_blocks(lo, hi, kv_len)
    return BlockMask.from_kv_blocks(*lists(some), None, None, BLOCK_SIZE=FB, mask_mod=mm, seq_lengths=sl)

def group(n):
    if n.startswith("streams."):
        return "side." + ("wte" if ".wte" in n else n.split(".")[4])
    return ("main.cross." + n.split(".cross.")[1].split(".")[1]) if ".cross." in n else ("main.wte" if n.startswith("wte") else "main.blocks")

def grads(model, x, fn):
    model.zero_grad()
    _, loss = fn(**x)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

B = int(os.environ.get("B", 8))
for pack in [p == "1" for p in os.environ.get("PACKS", "10")]:
    batches = Batches(corpus, cfg["block_size"], main_tok, side_toks, mc.streams, 1, pack=pack)
    x = batch_inputs(batches.get(batches.positions(0, B)), "cuda")
    torch.manual_seed(0)
    model = GPT(mc).cuda().train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".cross." in n and n.endswith("proj.weight"):
                p.normal_(0, 0.02)
    model.attention = "sdpa"
    l0, g0 = grads(model, x, model)
    model.attention = "flex"
    for name, maker, comp in [("flex_eager", orig_mask, False), ("flex_compiled", orig_mask, True),
                              ("compiled_torch_transpose", torch_transpose, True),
                              ("compiled_no_full_blocks", no_full, True)]:
        if name not in os.environ.get("ONLY", name) or (name == "flex_eager" and pack and B > 8):
            continue
        M.interval_block_mask = maker
        torch._dynamo.reset()
        try:
            l1, g1 = grads(model, x, torch.compile(model) if comp else model)
        except Exception as e:
            print(f"pack={pack} {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True); continue
        err = {}
        for n in g0:
            g = group(n)
            d, r = (g1[n] - g0[n]).abs().max().item(), g0[n].abs().max().item()
            e0, r0 = err.get(g, (0, 0))
            err[g] = (max(e0, d), max(r0, r))
        print(f"pack={pack} {name}: loss {l0:.5f} vs {l1:.5f} | " +
              " ".join(f"{g} {d / max(r, 1e-12):.1e}" for g, (d, r) in sorted(err.items())), flush=True)
    M.interval_block_mask = orig_mask
