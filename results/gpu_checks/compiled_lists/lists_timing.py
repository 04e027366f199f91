# host and compile time of one training batch's block lists (gpt2_bytes sizes): eager vs compiled
import sys, time, torch
sys.path.insert(0, "."); import model
dyn = sys.argv[1] == "dynamic"
fn = torch.compile(model.interval_block_lists, dynamic=True) if dyn else model.compiled_block_lists
L, T = 32 * 4096, 32 * 1024
j = torch.arange(L, device="cuda")
g = torch.Generator().manual_seed(0)
lo = torch.randint(0, L, (1, T), generator=g).sort(1).values
hi = torch.maximum(torch.cummax((lo + torch.randint(-50, 600, (1, T), generator=g)).clamp(0, L), 1).values, lo)
cl, ch = lo.int().cuda(), hi.int().cuda()
sl, sh = torch.maximum(j - 255, j // 4096 * 4096)[None].int(), (j + 1)[None].int()
def both(f):
    return f(sl, sh, L), f(cl, ch, L)
t = time.time(); both(fn); torch.cuda.synchronize(); print(f"{sys.argv[1]}: first call (compile) {time.time() - t:.1f} s")
for name, f in (("eager", model.interval_block_lists), (sys.argv[1], fn)):
    both(f); torch.cuda.synchronize()
    host, total = [], []
    for _ in range(20):
        t = time.time(); both(f); host.append(time.time() - t); torch.cuda.synchronize(); total.append(time.time() - t)
    host.sort(); total.sort()
    print(f"{name}: host {1000 * host[10]:.2f} ms, with GPU {1000 * total[10]:.2f} ms (medians of 20, two masks)")
