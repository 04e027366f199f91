"""The GPU's own-elements kernel (kernels.py) against the PyTorch path, on the CPU through Triton's
interpreter (TRITON_INTERPRET=1, read when the kernels are defined: so in a process of its own).
GPU runs of test_model.py compare the compiled kernel with SDPA at training sizes."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r"""
import torch
import kernels
from attention import attend, interval_mask

def intervals(g, R, Q, L, longest):
    # disjoint, nondecreasing: tokens of 0..longest elements (some longer than a kernel's load of
    # BLOCK_M), gaps of elements no token reads, empty tokens (padding, a cut)
    lengths = torch.randint(0, longest + 1, (R, Q), generator=g) * (torch.rand(R, Q, generator=g) > 0.2)
    gaps = torch.randint(0, 3, (R, Q), generator=g)
    hi = (lengths + gaps).cumsum(1).clamp(max=L - 3)
    lo = (hi - lengths).clamp(min=0)
    return lo.int(), hi.int()

for seed, (R, H, Q, D, longest) in enumerate([(2, 2, 37, 16, 20), (1, 1, 50, 32, 12), (3, 4, 17, 8, 40)]):
    g = torch.Generator().manual_seed(seed)
    L = Q * (longest + 2) // 2 + 8
    lo, hi = intervals(g, R, Q, L, longest)
    assert (hi - lo).max() > kernels.BLOCK_M and (hi == lo).any(), "need long and empty tokens"
    # queries as the model passes them: a transposed view of (rows, queries, heads, d)
    q = torch.randn(R, Q, H, D, generator=g, dtype=torch.float64).transpose(1, 2).requires_grad_()
    # keys and values as the model passes them: halves of one projection, views with gaps
    kv = torch.randn(R, L, 2 * H * D, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (t.view(R, L, H, D).transpose(1, 2) for t in kv.chunk(2, dim=-1))
    out = kernels.own_attention(q, k, v, lo, hi)
    ref = attend(q, k, v, interval_mask(lo, hi, L))
    err = (out - ref).abs().max().item()
    assert err < 1e-5, ("forward", seed, err)  # float32 inside the kernel
    assert (out[(hi == lo)[:, None].expand(R, H, Q)] == 0).all(), "a token reading nothing outputs 0"
    w = torch.randn(R, H, Q, D, generator=g, dtype=torch.float64)
    assert not v.is_contiguous() and v.stride(2) == 2 * H * D
    grads = torch.autograd.grad((out * w).sum(), (q, kv))
    for name, a, b in zip(["q", "kv"], grads, torch.autograd.grad((ref * w).sum(), (q, kv))):
        err = (a - b).abs().max().item()
        assert err < 1e-5, (name, seed, err)
    read = torch.zeros(R, L, dtype=torch.bool)
    for r in range(R):
        for a, b in zip(lo[r].tolist(), hi[r].tolist()):
            read[r, a:b] = True
    dv = grads[1].chunk(2, dim=-1)[1]
    assert ((dv.abs().sum(-1) > 0) == read).all(), "only elements read get gradients"
print("kernel ok")
"""


def test_own_elements_kernel_equals_the_interval_rule():
    """Values and gradients of the Triton kernel equal dense SDPA under the same disjoint intervals:
    tokens longer than one load (the kernel's loop), empty ones, elements nobody reads, several rows
    and heads, and queries passed as a transposed view (the kernel reads strides)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and "kernel ok" in run.stdout, run.stdout + run.stderr[-3000:]
