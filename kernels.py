"""
A Triton kernel for the byte branch's hottest path on a GPU: cross-attention in which each token reads
only its own elements (locality 0). Token q of row r reads the contiguous elements [lo[r, q], hi[r, q])
and no two tokens share an element, so one program per block of tokens loads its few keys directly
from the element rows (no block mask, no dense gather), and the backward pass writes each key's and
value's gradient once (no atomics). The same function as attention.attend_own_elements, the PyTorch path
that CPUs run and the tests compare against; softmax in float32, tokens that read nothing output 0.

Registered as torch custom ops, so that torch.compile treats them as opaque kernels in its graph.
"""
import torch
import triton
import triton.language as tl

BLOCK_Q = 16  # tokens per program
BLOCK_M = 8   # elements per token loaded at a time (tokens average ~4 bytes; longer ones loop)


@triton.jit
def _tokens(LO, HI, n_head, n_query, BLOCK_Q: tl.constexpr):
    """This program's tokens: row, head, row * heads + head, token indices, whether each is in the
    row, and each one's elements [lo, lo + count)."""
    rh = tl.program_id(1)
    qi = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    in_row = qi < n_query
    r = rh // n_head
    lo = tl.load(LO + r * n_query + qi, mask=in_row, other=0)
    count = tl.maximum(tl.load(HI + r * n_query + qi, mask=in_row, other=0) - lo, 0)
    return r, rh % n_head, rh, qi, in_row, lo, count


@triton.jit
def _at(r, h, i, s_r, s_h, s_i, D: tl.constexpr):
    """Offsets of vectors i (indices with a trailing axis of 1) of head h in row r."""
    return r * s_r + h * s_h + i * s_i + tl.arange(0, D)


@triton.jit
def _elements(K, V, r, h, lo, count, start, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n, D: tl.constexpr,
              BLOCK_M: tl.constexpr):
    """Each token's elements start .. start + BLOCK_M - 1: which exist, their indices (trailing axis
    of 1), keys and values in float32 (zeros where none)."""
    j = start + tl.arange(0, BLOCK_M)
    valid = j[None, :] < count[:, None]
    m = (lo[:, None] + j[None, :])[:, :, None]
    k = tl.load(K + _at(r, h, m, sk_r, sk_h, sk_n, D), mask=valid[:, :, None], other=0.0)
    v = tl.load(V + _at(r, h, m, sv_r, sv_h, sv_n, D), mask=valid[:, :, None], other=0.0)
    return valid, m, k.to(tl.float32), v.to(tl.float32)


@triton.jit
def _own_fwd(Q, K, V, O, LSE, LO, HI, sq_r, sq_h, sq_q, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n,
             so_r, so_h, so_q, n_head, n_query, scale,
             D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    r, h, rh, qi, in_row, lo, count = _tokens(LO, HI, n_head, n_query, BLOCK_Q)
    q = tl.load(Q + _at(r, h, qi[:, None], sq_r, sq_h, sq_q, D), mask=in_row[:, None],
                other=0.0).to(tl.float32)
    top = tl.full([BLOCK_Q], float("-inf"), tl.float32)  # running max of scores
    total = tl.zeros([BLOCK_Q], tl.float32)              # running sum of exp(score - top)
    acc = tl.zeros([BLOCK_Q, D], tl.float32)
    for start in range(0, tl.max(count), BLOCK_M):
        valid, m, k, v = _elements(K, V, r, h, lo, count, start, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n,
                                   D, BLOCK_M)
        s = tl.where(valid, tl.sum(q[:, None, :] * k, axis=2) * scale, float("-inf"))
        new_top = tl.maximum(top, tl.max(s, axis=1))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # no score yet: nothing to scale
        p = tl.where(valid, tl.exp(s - shift[:, None]), 0.0)
        rescale = tl.exp(top - shift)
        total = total * rescale + tl.sum(p, axis=1)
        acc = acc * rescale[:, None] + tl.sum(p[:, :, None] * v, axis=1)
        top = new_top
    out = acc / tl.maximum(total, 1e-30)[:, None]
    tl.store(O + _at(r, h, qi[:, None], so_r, so_h, so_q, D), out.to(O.dtype.element_ty),
             mask=in_row[:, None])
    tl.store(LSE + rh * n_query + qi, top + tl.log(tl.maximum(total, 1e-30)), mask=in_row)


@triton.jit
def _own_bwd(Q, K, V, O, DO, LSE, LO, HI, DQ, DK, DV, sq_r, sq_h, sq_q, sk_r, sk_h, sk_n,
             sv_r, sv_h, sv_n, so_r, so_h, so_q, sdo_r, sdo_h, sdo_q, sdq_r, sdq_h, sdq_q,
             sdk_r, sdk_h, sdk_n, sdv_r, sdv_h, sdv_n, n_head, n_query, scale,
             D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    r, h, rh, qi, in_row, lo, count = _tokens(LO, HI, n_head, n_query, BLOCK_Q)
    row = in_row[:, None]
    q = tl.load(Q + _at(r, h, qi[:, None], sq_r, sq_h, sq_q, D), mask=row, other=0.0).to(tl.float32)
    do = tl.load(DO + _at(r, h, qi[:, None], sdo_r, sdo_h, sdo_q, D), mask=row,
                 other=0.0).to(tl.float32)
    o = tl.load(O + _at(r, h, qi[:, None], so_r, so_h, so_q, D), mask=row, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=1)  # softmax backward: sum_j p_j dp_j = dO . O
    lse = tl.load(LSE + rh * n_query + qi, mask=in_row, other=0.0)
    dq = tl.zeros([BLOCK_Q, D], tl.float32)
    for start in range(0, tl.max(count), BLOCK_M):
        valid, m, k, v = _elements(K, V, r, h, lo, count, start, sk_r, sk_h, sk_n, sv_r, sv_h, sv_n,
                                   D, BLOCK_M)
        s = tl.sum(q[:, None, :] * k, axis=2) * scale
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        ds = p * (tl.sum(do[:, None, :] * v, axis=2) - delta[:, None])
        dq += tl.sum(ds[:, :, None] * k, axis=1) * scale
        # each element has one reader: its gradients are written, not accumulated
        tl.store(DV + _at(r, h, m, sdv_r, sdv_h, sdv_n, D),
                 (p[:, :, None] * do[:, None, :]).to(DV.dtype.element_ty), mask=valid[:, :, None])
        tl.store(DK + _at(r, h, m, sdk_r, sdk_h, sdk_n, D),
                 (ds[:, :, None] * q[:, None, :] * scale).to(DK.dtype.element_ty),
                 mask=valid[:, :, None])
    tl.store(DQ + _at(r, h, qi[:, None], sdq_r, sdq_h, sdq_q, D), dq.to(DQ.dtype.element_ty),
             mask=row)


def _strides(t):
    assert t.stride(-1) == 1, "the head dimension must be contiguous"
    return t.stride(0), t.stride(1), t.stride(2)


def _grid(q):
    R, H, Q, _ = q.shape
    return (triton.cdiv(Q, BLOCK_Q), R * H)


def _out_like(q):
    """(rows, heads, queries, d) laid out as (rows, queries, heads, d): the attention output's
    transpose(1, 2).reshape(...) back to (rows, queries, width) is then free."""
    R, H, Q, D = q.shape
    return q.new_empty(R, Q, H, D).transpose(1, 2)


@torch.library.custom_op("bytecross::own_attention", mutates_args=())
def _own_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    R, H, Q, D = q.shape
    out, lse = _out_like(q), q.new_empty(R, H, Q, dtype=torch.float32)
    lo, hi = lo.contiguous(), hi.contiguous()
    _own_fwd[_grid(q)](q, k, v, out, lse, lo, hi, *_strides(q), *_strides(k), *_strides(v),
                       *_strides(out), H, Q, D ** -0.5, D=D, BLOCK_Q=BLOCK_Q, BLOCK_M=BLOCK_M)
    return out, lse


@_own_attention.register_fake
def _(q, k, v, lo, hi):
    R, H, Q, _ = q.shape
    return _out_like(q), q.new_empty(R, H, Q, dtype=torch.float32)


@torch.library.custom_op("bytecross::own_attention_backward", mutates_args=())
def _own_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            out: torch.Tensor, lse: torch.Tensor, lo: torch.Tensor,
                            hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    R, H, Q, D = q.shape
    # new contiguous tensors, each written through its own strides: k and v are often views with
    # gaps (halves of one key/value projection), whose *_like copies would not share their strides.
    # Elements no token reads get zero gradients; the others are written once.
    dq, dk, dv = q.new_empty(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    lo, hi = lo.contiguous(), hi.contiguous()
    _own_bwd[_grid(q)](q, k, v, out, do, lse, lo, hi, dq, dk, dv, *_strides(q), *_strides(k),
                       *_strides(v), *_strides(out), *_strides(do), *_strides(dq), *_strides(dk),
                       *_strides(dv), H, Q, D ** -0.5, D=D, BLOCK_Q=BLOCK_Q, BLOCK_M=BLOCK_M)
    return dq, dk, dv


@_own_attention_backward.register_fake
def _(do, q, k, v, out, lse, lo, hi):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, lo, hi = inputs
    ctx.save_for_backward(q, k, v, *output, lo, hi)


def _backward(ctx, d_out, d_lse):
    q, k, v, out, lse, lo, hi = ctx.saved_tensors
    dq, dk, dv = _own_attention_backward(d_out.contiguous() if d_out.stride(-1) != 1 else d_out,
                                         q, k, v, out, lse, lo, hi)
    return dq, dk, dv, None, None


_own_attention.register_autograd(_backward, setup_context=_setup_context)


def own_attention(q, k, v, lo, hi):
    """Softmax attention of query q (rows, heads, queries, d) over keys [lo[r, q], hi[r, q]) of its
    row, the intervals of different queries disjoint (locality 0). Returns (rows, heads, queries, d)."""
    return _own_attention(q, k, v, lo, hi)[0]
