"""
Who sees what, and the attention that applies it. The data loader gives every query one interval
[lo, hi) of keys (data.visible_intervals); two paths compute the same function from it:
- "sdpa" (CPU, tests, evaluation): a dense boolean mask for scaled_dot_product_attention;
- "flex" (GPU): FlexAttention with block masks whose block lists are built from the intervals at the
  start of the forward pass, outside the model's compiled graph; with locality 0, where every key has
  at most one reader, cross-attention reads each query's own keys directly (kernels.py on a GPU, or
  gathers and scatter-adds over the keys in PyTorch) instead; a side stream's sliding-window
  self-attention may run chunk by chunk as one batched SDPA (sliding_window), without block masks.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:  # the GPU's own-elements kernel (Triton ships with torch's CUDA builds); CPUs use PyTorch
    import kernels
except ImportError:
    kernels = None

FLEX_BLOCK = 128
WINDOW_CHUNK = 64  # elements per chunk of a sliding window computed chunk by chunk


def attend(q, k, v, mask):
    """mask: 'causal', a BlockMask (fused FlexAttention), OwnElements (each query reads only its own
    elements) or a boolean tensor (SDPA; rows that see nothing output zeros, as FlexAttention does)."""
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if isinstance(mask, BlockMask):
        # the main kernel for any number of queries: below 128, inductor's decoding kernel, which it
        # would pick, failed to compile these masks (torch 2.11, an H200)
        return flex_attention(q, k, v, block_mask=mask, kernel_options=dict(FORCE_USE_FLEX_ATTENTION=True))
    if isinstance(mask, SlidingWindow):
        return attend_window_chunks(q, k, v, mask)
    if isinstance(mask, OwnElements):
        if mask.kernel and q.is_cuda:
            return kernels.own_attention(q, k, v, mask.lo, mask.hi)
        return attend_own_elements(q, k, v, mask)
    sees_any = mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~sees_any)
    return out * sees_any


def attend_own_elements(q, k, v, own):
    """Softmax attention of each query over its own few elements, computed per element (one score
    each) and summed into queries by scatter-adds: no block of mostly masked scores, where a
    FlexAttention block of 128 tokens spans ~480 bytes of which each token reads ~4. The same
    function as the interval mask; queries that read nothing output zeros."""
    R, H, Q, D = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax and sums in float32 at least
    idx = own.owner[:, None].expand(R, H, -1)
    idx_d = idx[..., None].expand(-1, -1, -1, D)
    scores = (q.gather(2, idx_d).to(acc) * k.to(acc)).sum(-1) * D ** -0.5
    scores = torch.where(own.owned[:, None], scores, -math.inf)
    # each query's largest score, subtracted for a stable exp (a constant: no gradient needed)
    top = scores.new_full((R, H, Q), -math.inf).scatter_reduce(2, idx, scores.detach(), "amax")
    # 0 where not owned (-inf - 0; a reader-less query's top is -inf, and -inf - -inf would be nan)
    weight = (scores - torch.where(own.owned[:, None], top.gather(2, idx), 0.0)).exp()
    total = weight.new_zeros(R, H, Q).scatter_add(2, idx, weight)
    out = weight.new_zeros(R, H, Q, D).scatter_add(2, idx_d, weight[..., None] * v.to(acc))
    return (out / total.clamp_min(1e-30)[..., None]).type_as(q)



class SlidingWindow(NamedTuple):
    """A side stream's own attention chunk by chunk (sliding_window): mask (rows x chunks, 1,
    WINDOW_CHUNK, span) says which of the span keys before and in its chunk each element reads."""
    mask: torch.Tensor


def sliding_window(pos, window):
    """SlidingWindow for 'element m reads elements m - window + 1 .. m of its own window (whose first
    element is m - pos[m])', the same as data.collate's self_lo, self_hi intervals; built once per
    forward pass for all of a stream's layers. Each chunk's keys are its own and those of the
    ceil((window - 1) / WINDOW_CHUNK) chunks before it."""
    C = WINDOW_CHUNK
    N = pos.size(1)
    back = -(-(window - 1) // C)
    # query i of chunk c is element c*C + i, key j element (c - back)*C + j: i + back*C - j back
    ago = (torch.arange(C, device=pos.device)[:, None] + back * C
           - torch.arange((back + 1) * C, device=pos.device))
    pos = F.pad(pos, (0, -N % C)).view(-1, 1, C, 1)
    # the window, and none before the element's own window's first (nor the padding ahead of row 0)
    return SlidingWindow((ago >= 0) & (ago < window) & (ago <= pos))


def attend_window_chunks(q, k, v, w):
    """Sliding-window attention computed densely: each chunk of WINDOW_CHUNK queries against its
    span of keys, in one batched SDPA under w.mask. No block lists to build each step and no
    FlexAttention kernel, which runs heads of 64 far below the GPU's peak (FINDINGS.md)."""
    R, H, N, D = q.shape
    C, span = WINDOW_CHUNK, w.mask.size(-1)
    n, before, pad = -(-N // C), span - C, -N % C

    def chunks(t, before, size):  # (R * n, H, size, D): rows of t from `before` elements ahead
        t = F.pad(t, (0, 0, before, pad)).unfold(2, size, C)  # (R, H, n, D, size), a view
        return t.permute(0, 2, 1, 4, 3).reshape(R * n, H, size, D)

    out = F.scaled_dot_product_attention(chunks(q, 0, C), chunks(k, before, span),
                                         chunks(v, before, span), attn_mask=w.mask)
    return out.view(R, n, H, C, D).transpose(1, 2).reshape(R, H, n * C, D)[:, :, :N]


def interval_mask(lo, hi, kv_len, block_lists=None):
    """Query q of row r sees keys [lo[r, q], hi[r, q]). A BlockMask for FlexAttention when given its
    block lists, else a dense boolean mask (rows, 1, queries, keys) for SDPA."""
    if block_lists is not None:
        return interval_block_mask(lo, hi, kv_len, block_lists)
    k = torch.arange(kv_len, device=lo.device)
    return ((k >= lo[..., None]) & (k < hi[..., None]))[:, None]


class OwnElements(NamedTuple):
    """Who reads what when the queries' intervals [lo, hi) are disjoint (locality 0): element m of
    row r is read by query owner[r, m] alone, if owned[r, m], else by none. kernel: on a GPU, attend
    by kernels.py (from lo and hi) rather than by gathers and scatter-adds (from owner and owned)."""
    lo: torch.Tensor
    hi: torch.Tensor
    owner: torch.Tensor
    owned: torch.Tensor
    kernel: bool = False


def own_elements(lo, hi, kv_len, kernel=False):
    """OwnElements for 'query q reads [lo[r, q], hi[r, q])' with disjoint intervals whose ends are
    nondecreasing along q (locality 0): element m's reader is the first query ending past m, if
    that query starts at or before m."""
    m = torch.arange(kv_len, device=lo.device, dtype=hi.dtype).expand(lo.size(0), -1).contiguous()
    owner = torch.searchsorted(hi.contiguous(), m, right=True).clamp_max(lo.size(1) - 1)
    return OwnElements(lo, hi, owner, (lo.gather(1, owner) <= m) & (m < hi.gather(1, owner)), kernel)


def pad_queries(t):
    """(rows, queries) padded to whole FlexAttention blocks by repeating the last query."""
    return torch.cat([t, t[:, -1:].expand(t.size(0), -t.size(1) % FLEX_BLOCK)], 1)


def interval_block_mask(lo, hi, kv_len, block_lists):
    """FlexAttention BlockMask for 'query q sees keys [lo[r,q], hi[r,q])' from its block lists
    (interval_block_lists); in a compiled graph only the mask_mod (a comparison) is traced."""
    lo_p, hi_p = pad_queries(lo), pad_queries(hi)
    mask_mod = lambda b, h, q, kv: (kv >= lo_p[b, q]) & (kv < hi_p[b, q])
    # the GPU kernels read the lists as contiguous int32, whatever their strides
    assert all(t.is_contiguous() and t.dtype == torch.int32 for t in block_lists)
    return BlockMask((lo.size(1), kv_len), *block_lists, (FLEX_BLOCK, FLEX_BLOCK), mask_mod)


@torch.compiler.disable
def stream_block_lists(sides, needs, compiled=False):
    """Per side stream, the block lists of its self-attention mask and of cross-attention into it
    (None where `needs` says (self, cross) is not a BlockMask: a recurrent stream, locality 0), built
    outside the model's compiled graph in one call at the start of the forward pass: one graph
    break, not one per mask. Built inside that graph on an H200, two constructions of these lists
    gave wrong gradients or illegal memory accesses (results/flex_gradient_bug/). `compiled`: by a
    graph of their own (compiled_block_lists), whose outputs are plain tensors as eager ones are."""
    build = compiled_block_lists if compiled else interval_block_lists
    lists = []
    for side, (own_mask, cross_mask) in zip(sides, needs):
        n = side["ids"].size(1)
        own = build(side["self_lo"], side["self_hi"], n) if own_mask else None
        cross = build(side["cross_lo"], side["cross_hi"], n) if cross_mask else None
        lists.append((own, cross))
    return lists


def ordered(blocks):
    """(count, indices) of a (..., query blocks, key blocks) boolean, with a heads axis of 1 put
    before the query blocks: per query block, the key blocks marked, in increasing order, then the
    others (a stable descending sort). Both contiguous, whatever the strides of `blocks`."""
    m = blocks.unsqueeze(-3).to(torch.uint8, memory_format=torch.contiguous_format)
    order = torch.sort(m, dim=-1, descending=True, stable=True).indices
    return m.sum(-1, dtype=torch.int32), order.to(torch.int32)


def interval_block_lists(lo, hi, kv_len):
    """The eight block lists of a BlockMask (partial and full key blocks per query block, and the
    transposed lists that the backward pass reads) for 'query q sees keys [lo[r,q], hi[r,q])'.
    The lists must be contiguous: FlexAttention's GPU kernels ignore strides (a transposed view
    gave wrong gradients there, while CPU flex never reads the lists). Few operations, as they run
    eagerly on the host's critical path every step (FINDINGS.md)."""
    lo, hi = pad_queries(lo), pad_queries(hi)
    R, Q = lo.shape
    nq, nk = Q // FLEX_BLOCK, -(-kv_len // FLEX_BLOCK)
    # per query, two ranges of key blocks: those it touches, lo // B .. (hi - 1) // B (none when
    # hi <= lo), and those it covers wholly, ceil(lo / B) .. hi // B - 1 (a last key block cut
    # short by kv_len ends past every hi: never covered); end >= first, so an empty range adds 0
    first = torch.stack([lo // FLEX_BLOCK, -(-lo // FLEX_BLOCK)])
    end = torch.maximum(torch.stack([torch.where(hi > lo, (hi - 1) // FLEX_BLOCK + 1, 0),
                                     hi // FLEX_BLOCK]), first)
    # how many queries of each query block have each key block in range: +1 at a range's first
    # block, -1 past its end, then a cumulative sum along the key blocks
    block = (torch.arange(2 * R * Q, device=lo.device) // FLEX_BLOCK).view(2, R, Q) * (nk + 1)
    diff = torch.zeros(2 * R * nq * (nk + 1), dtype=torch.int32, device=lo.device)
    ones = torch.ones(2 * R * Q, dtype=torch.int32, device=lo.device)
    diff.scatter_add_(0, torch.cat([(block + first).flatten(), (block + end).flatten()]),
                      torch.cat([ones, -ones]))
    queries = diff.view(2, R, nq, nk + 1).cumsum(-1, dtype=torch.int32)[..., :nk]
    full = queries[1] == FLEX_BLOCK  # every query of the block, the padding repeats included
    blocks = torch.stack([(queries[0] > 0) & ~full, full])  # partial, full
    kv_counts, kv_indices = ordered(blocks)
    q_counts, q_indices = ordered(blocks.transpose(-1, -2))
    return (kv_counts[0], kv_indices[0], kv_counts[1], kv_indices[1],
            q_counts[0], q_indices[0], q_counts[1], q_indices[1])


# Eager, the lists' ~60 operations a mask are ~60 launches on the host's critical path every step
# (FINDINGS.md); compiled on their own they are a few fused kernels. Compiled lazily, on first
# call; one graph per shape (training's packed rows, evaluation's windows).
compiled_block_lists = torch.compile(interval_block_lists, dynamic=False)
