# Issue 8 probe: the byte GPT's sliding-window self-attention (one packed row of gpt2_bytes' training
# batch: 32 windows x 4096 bytes, window 256) computed two ways, forward + backward:
#   flex:    FlexAttention over the interval block mask (what model.py runs), compiled;
#   chunked: queries in chunks of 256, each against the keys of its own and the previous chunk (512),
#            one dense boolean mask per chunk from the same intervals, by SDPA (no compile).
# Both compute "query j reads keys [lo[j], hi[j])" exactly when every interval spans <= 256 keys.
#   python results/gpu_checks/local_attention/local_attention_bench.py
import os, sys, time
sys.path.insert(0, os.getcwd())
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
import model as M

cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"
W = C = 256


def intervals(n_windows, per_window, window, device):
    """self_lo, self_hi of one packed row (data.collate's rule) with windows of random lengths."""
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(per_window // 2, per_window + per_window // 2, (n_windows,), generator=g)
    L = n_windows * per_window
    starts = torch.zeros(L, dtype=torch.long)
    pos = 0
    for n in lens.tolist():  # windows back to back until the row is full; the rest padding (own slot each)
        if pos >= L:
            break
        starts[pos:pos + n] = pos
        pos += n
    j = torch.arange(L)
    if pos < L:
        starts[pos:] = j[pos:]
    lo = torch.maximum(j - window + 1, starts)
    return lo[None].to(device), (j + 1)[None].to(device)


def chunked_attention(q, k, v, lo, hi):
    """q, k, v (1, H, L, D), L a multiple of C; every [lo, hi) within [j - C + 1, j + 1)."""
    _, H, L, D = q.shape
    n = L // C
    qc = q.view(H, n, C, D).transpose(0, 1)                      # (n, H, C, D)
    pad = lambda t: torch.cat([t.new_zeros(H, C, D), t[0]], 1)   # a chunk of zeros before the first
    kc = pad(k).unfold(1, 2 * C, C).permute(1, 0, 3, 2)          # (n, H, 2C, D): previous + own chunk
    vc = pad(v).unfold(1, 2 * C, C).permute(1, 0, 3, 2)
    key = torch.arange(n, device=q.device)[:, None] * C - C + torch.arange(2 * C, device=q.device)
    lo_c, hi_c = lo[0].view(n, C, 1), hi[0].view(n, C, 1)
    mask = (key[:, None, :] >= lo_c) & (key[:, None, :] < hi_c)   # (n, C, 2C)
    out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask[:, None])
    return out.transpose(0, 1).reshape(1, H, L, D)


def time_it(fn, steps=20):
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ts = []
    for _ in range(steps):
        t = time.time(); fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(1000 * (time.time() - t))
    return sorted(ts)[steps // 2]


if __name__ == "__main__":
    n_windows, per_window = (32, 4096) if cuda else (2, 512)
    lo, hi = intervals(n_windows, per_window, W, dev)
    L = lo.size(1)
    for H, D in ((2, 64), (1, 128)):
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16)
        dense = M.attend(q, k, v, M.interval_mask(lo, hi, L)) if L <= 4096 else None
        ways = {}
        if cuda:
            lists = M.interval_block_lists(lo, hi, L)
            flex = torch.compile(lambda q, k, v: M.attend(q, k, v, M.interval_mask(lo, hi, L, lists)))
            ways["flex (compiled)"] = flex
        for name, backend in (("chunked, efficient", SDPBackend.EFFICIENT_ATTENTION),
                              ("chunked, cuDNN", SDPBackend.CUDNN_ATTENTION),
                              ("chunked, math", SDPBackend.MATH)):
            def way(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return chunked_attention(q, k, v, lo, hi)
            ways[name] = way
        ref = None
        for name, fn in ways.items():
            try:
                t0 = time.time()
                out = fn(q, k, v)
                if ref is None:
                    ref = (dense if dense is not None else out).float()
                err = (out.float() - ref).abs().max().item()
                def step():
                    q.grad = k.grad = v.grad = None
                    fn(q, k, v).backward(g)
                ms = time_it(step)
                print(f"H={H} D={D} {name:>20}: {ms:7.3f} ms fwd+bwd (first call {time.time() - t0:.1f} s), "
                      f"max |diff| {err:.4f} vs {'dense SDPA' if dense is not None else 'the first way'}", flush=True)
            except Exception as e:
                print(f"H={H} D={D} {name:>20}: failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
