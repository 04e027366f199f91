"""
bytecross: a token-level GPT that reads, through cross-attention, small causal GPTs running over other
streams of the same text (UTF-8 bytes by default, or tokens of other tokenizers).

    main stream:  GPT over BPE tokens (width n_embd), causal self-attention
    side stream:  small GPT over bytes (width stream n_embd), causal sliding-window self-attention
    cross:        in chosen main layers, token i attends to side elements that lie within tokens 0..i

Who may see what is defined by byte offsets alone (see data.py): token i reads side element m iff
    known[m] <= tok_end[i]                       (m is fully fixed by bytes of tokens 0..i)
    and end[m] > tok_start[i - k]                (only with locality k: m ends inside tokens i-k..i)
Both bounds are monotone in m, so each token reads one contiguous interval [lo_i, hi_i) of elements.
Two attention paths compute the same function: "flex" (GPU; FlexAttention with block masks built from
the intervals) and "sdpa" (CPU and tests; dense boolean masks written straight from the rule above).
With no streams the model is a plain GPT: RMSNorm, rotary embeddings, QK-norm, ReLU^2 MLP, tied embeddings.
"""
import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.nn.attention.flex_attention import BlockMask, flex_attention

FLEX_BLOCK = 128


@dataclass
class StreamConfig:
    tokenizer: str = "bytes"        # 'bytes', a tiktoken name ('gpt2', 'cl100k_base') or a .tiktoken file
    vocab_size: int = 256           # set from the tokenizer by train.py
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    window: int = 256               # sliding attention window over the stream's own elements
    budget: int = 4096              # elements per training window (a fixed shape); ~bytes/token * block_size
    cross_layers: object = (0,)     # main layers that read this stream: a list of indices, or "all"
    locality: object = None         # k: token i reads only elements ending inside tokens i-k..i; None: all


@dataclass
class GPTConfig:
    tokenizer: str = "gpt2"
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    streams: list = field(default_factory=list)  # StreamConfig (or dicts of its fields)

    def __post_init__(self):
        valid = {f.name for f in fields(StreamConfig)}
        streams = []
        for s in self.streams:
            if isinstance(s, dict):
                bad = set(s) - valid
                if bad:
                    raise ValueError(f"unknown stream option(s) {sorted(bad)}; valid: {sorted(valid)}")
                s = StreamConfig(**s)
            if s.cross_layers == "all":
                s.cross_layers = list(range(self.n_layer))
            s.cross_layers = sorted(int(l) for l in s.cross_layers)
            if not all(0 <= l < self.n_layer for l in s.cross_layers):
                raise ValueError(f"stream {s.tokenizer}: cross_layers {s.cross_layers} outside 0..{self.n_layer - 1}")
            if s.locality is not None and int(s.locality) < 0:
                raise ValueError(f"stream {s.tokenizer}: locality must be None or >= 0")
            for name, width, heads in (("main", self.n_embd, self.n_head), (s.tokenizer, s.n_embd, s.n_head)):
                if width % heads or (width // heads) % 2:
                    raise ValueError(f"{name}: n_embd {width} must split into n_head {heads} heads of even size")
            streams.append(s)
        if len({s.tokenizer for s in streams}) != len(streams):
            raise ValueError("each side stream needs its own tokenizer")
        self.streams = streams

# ------------------------------------------------------------------------------------------------
# building blocks

def padded(vocab_size):
    """Embedding rows rounded up to a multiple of 64: faster matrix shapes (nanoGPT's 50257 -> 50304)."""
    return -(-vocab_size // 64) * 64


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rope(pos, head_dim, base=10000.0):
    """cos, sin for integer positions pos (..., T): shape (..., 1, T, head_dim/2) to broadcast over heads."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[..., None] * inv_freq
    return angles.cos().unsqueeze(-3), angles.sin().unsqueeze(-3)


def apply_rope(x, cos, sin):
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attend(q, k, v, mask):
    """mask: 'causal', a BlockMask (fused FlexAttention) or a boolean tensor (SDPA; rows that see
    nothing output zeros, as FlexAttention does)."""
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if isinstance(mask, BlockMask):
        return flex_attention(q, k, v, block_mask=mask)
    sees_any = mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~sees_any)
    return out * sees_any


class Attention(nn.Module):
    """Multi-head attention; queries from x, keys and values from `source` (x itself if None)."""

    def __init__(self, q_dim, kv_dim, inner, n_head):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(q_dim, inner, bias=False)
        self.kv = nn.Linear(kv_dim, 2 * inner, bias=False)
        self.proj = nn.Linear(inner, q_dim, bias=False)

    def forward(self, x, source, q_rope, k_rope, mask):
        B, T, _ = x.shape
        heads = lambda t: t.view(B, t.size(1), self.n_head, -1).transpose(1, 2)
        q = heads(self.q(x))
        k, v = map(heads, self.kv(x if source is None else source).chunk(2, dim=-1))
        q, k = apply_rope(norm(q), *q_rope), apply_rope(norm(k), *k_rope)  # QK-norm, then rotary
        y = attend(q, k, v, mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    """Pre-norm transformer block; `reads` lists (stream index, width, heads) for cross-attention."""

    def __init__(self, dim, n_head, dropout, reads=()):
        super().__init__()
        self.attn = Attention(dim, dim, dim, n_head)
        self.mlp = MLP(dim)
        self.cross = nn.ModuleList(Attention(dim, width, width, heads) for _, width, heads in reads)
        self.reads = [s for s, _, _ in reads]
        self.drop = nn.Dropout(dropout)

    def forward(self, x, self_rope, self_mask, sides=(), cross_ropes=(), cross_masks=()):
        x = x + self.drop(self.attn(norm(x), None, self_rope, self_rope, self_mask))
        for s, xattn in zip(self.reads, self.cross):
            q_rope, k_rope = cross_ropes[s]
            x = x + self.drop(xattn(norm(x), sides[s], q_rope, k_rope, cross_masks[s]))
        return x + self.drop(self.mlp(norm(x)))


class StreamGPT(nn.Module):
    """A small causal GPT over one side stream, with sliding-window attention; no output head."""

    def __init__(self, sc, dropout):
        super().__init__()
        self.wte = nn.Embedding(padded(sc.vocab_size), sc.n_embd)
        self.blocks = nn.ModuleList(Block(sc.n_embd, sc.n_head, dropout) for _ in range(sc.n_layer))

    def forward(self, ids, rope_, mask):
        x = self.wte(ids)
        for block in self.blocks:
            x = block(x, rope_, mask)
        return norm(x)

# ------------------------------------------------------------------------------------------------
# masks

def interval_block_mask(lo, hi, kv_len):
    """FlexAttention BlockMask for 'query q sees keys [lo[b,q], hi[b,q])', lo and hi nondecreasing in q.
    Built straight from the intervals: no dense mask is ever materialized."""
    B, Q = lo.shape
    nq, nk = -(-Q // FLEX_BLOCK), -(-kv_len // FLEX_BLOCK)
    first = torch.arange(nq, device=lo.device) * FLEX_BLOCK
    last = torch.clamp(first + FLEX_BLOCK, max=Q) - 1
    lo_first, lo_last, hi_first, hi_last = (t[:, i, None] for t in (lo, hi) for i in (first, last))
    k0 = torch.arange(nk, device=lo.device) * FLEX_BLOCK
    some = (k0 < hi_last) & (k0 + FLEX_BLOCK > lo_first)      # some query of the block may see some key
    full = (lo_last <= k0) & (hi_first >= k0 + FLEX_BLOCK)   # every query sees every key: no mask_mod needed
    partial = some & ~full

    def blocks(m):
        if nk == 1:  # no reduction over a single block: inductor (torch 2.11) fails to fuse one
            return m[..., 0].to(torch.int32)[:, None], torch.zeros_like(m, dtype=torch.int32)[:, None]
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True)
        return m.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    pad = nq * FLEX_BLOCK - Q  # padded query rows see nothing
    lo_p, hi_p = F.pad(lo, (0, pad)), F.pad(hi, (0, pad))

    if B == 1:  # one interval set for the whole batch (the sliding window): broadcast over b
        lo_p, hi_p = lo_p[0], hi_p[0]
        mask_mod = lambda b, h, q, kv: (kv >= lo_p[q]) & (kv < hi_p[q])
    else:
        mask_mod = lambda b, h, q, kv: (kv >= lo_p[b, q]) & (kv < hi_p[b, q])

    return BlockMask.from_kv_blocks(*blocks(partial), *blocks(full), BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(Q, kv_len))


@torch.compiler.disable  # eager: inductor's fused searchsorted fails to compile here (torch 2.11, Triton)
def cross_intervals(tok_start, tok_end, sides, localities):
    """For each stream, per token i the elements [lo_i, hi_i) it may read: hi_i counts elements with
    known <= tok_end[i]; lo_i counts elements with end <= tok_start[i-k] (0 without locality, or i < k)."""
    out = []
    for (_, end, known), k in zip(sides, localities):
        hi = torch.searchsorted(known, tok_end, right=True, out_int32=True)
        if k is None:
            lo = torch.zeros_like(hi)
        else:
            lo = F.pad(torch.searchsorted(end, tok_start, right=True, out_int32=True), (k, 0))[:, : hi.size(1)]
        out.append((lo, hi))
    return out


def local_bound(tok_start, k):
    """Start offset of token i-k for every i (-1, i.e. no bound, where i-k < 0 or k is None)."""
    if k is None:
        return torch.full_like(tok_start, -1)
    return F.pad(tok_start, (k, 0), value=-1)[:, : tok_start.size(1)].contiguous()

# ------------------------------------------------------------------------------------------------

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(padded(c.vocab_size), c.n_embd)  # padded ids are never inputs or targets
        self.streams = nn.ModuleList(StreamGPT(sc, c.dropout) for sc in c.streams)
        reads = [[(s, sc.n_embd, sc.n_head) for s, sc in enumerate(c.streams) if l in sc.cross_layers]
                 for l in range(c.n_layer)]
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, c.dropout, reads[l]) for l in range(c.n_layer))
        self.lm_head = nn.Linear(c.n_embd, padded(c.vocab_size), bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.attention = "sdpa"  # or "flex"; a runtime choice, not part of the architecture
        # rotary tables of the self-attention positions, computed once, not inside every compiled kernel
        table = lambda n, width, heads: torch.stack(rope(torch.arange(n), width // heads))
        self.register_buffer("main_rope", table(c.block_size, c.n_embd, c.n_head), persistent=False)
        for s, sc in enumerate(c.streams):
            self.register_buffer(f"stream_rope{s}", table(sc.budget, sc.n_embd, sc.n_head), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections, scaled by depth (GPT-2)
                depth = c.n_layer if name.startswith("blocks") else c.streams[int(name.split(".")[1])].n_layer
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))
            if ".cross." in name and name.endswith("proj.weight"):
                nn.init.zeros_(p)  # each stream starts as a no-op: the model starts as the plain GPT

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets=None, tok_start=None, tok_end=None, sides=(), reduction="mean"):
        """idx, targets: (B, T). tok_start, tok_end: (B, T) byte offsets of each token in its window.
        sides: per stream (ids, end, known), each (B, budget). Returns (logits, loss); logits cover the
        padded vocabulary (ids >= vocab_size never occur, and training drives them down)."""
        c, (B, T) = self.config, idx.shape
        assert T <= c.block_size, f"sequence of {T} tokens is longer than block_size {c.block_size}"
        assert len(sides) == len(c.streams), f"model has {len(c.streams)} side streams, got {len(sides)}"
        flex = self.attention == "flex"
        main_rope = tuple(self.main_rope[:, :, :T])
        side_h, cross_ropes, cross_masks = [], [], []
        if flex and sides:  # one call, before any loop: a graph break inside a loop costs more
            intervals = cross_intervals(tok_start, tok_end, sides, [sc.locality for sc in c.streams])
        for s, (sc, stream, (ids, end, known)) in enumerate(zip(c.streams, self.streams, sides)):
            hd, L = sc.n_embd // sc.n_head, ids.size(1)
            spos = torch.arange(L, device=idx.device)
            if flex:
                self_mask = interval_block_mask(torch.clamp(spos - sc.window + 1, min=0)[None].int(),
                                                (spos + 1)[None].int(), L)
            else:
                self_mask = (spos[None, :] <= spos[:, None]) & (spos[:, None] - spos[None, :] < sc.window)
            assert L <= sc.budget, f"stream {sc.tokenizer}: {L} elements, more than its budget {sc.budget}"
            side_h.append(stream(ids, tuple(getattr(self, f"stream_rope{s}")[:, :, :L]), self_mask))
            # rotary phases at byte offsets: attention knows how many bytes back each element ends
            cross_ropes.append((rope(tok_end, hd), rope(end, hd)))
            if flex:
                cross_masks.append(interval_block_mask(*intervals[s], L))
            else:  # the visibility rule, written out element by element
                bound = local_bound(tok_start, sc.locality)
                cross_masks.append(((known[:, None, :] <= tok_end[:, :, None])
                                    & (end[:, None, :] > bound[:, :, None]))[:, None])
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, main_rope, "causal", side_h, cross_ropes, cross_masks)
        logits = self.lm_head(norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1, reduction=reduction)
        return logits, loss if reduction == "mean" else loss.view(B, T)

    # --------------------------------------------------------------------------------------------
    # accounting

    def param_counts(self):
        """Parameters split into embeddings, main transformer, each side stream, and cross-attention."""
        counts = {"embeddings": self.wte.weight.numel(), "main": 0}
        for s in self.config.streams:
            counts[f"stream:{s.tokenizer}"] = 0
            counts[f"cross:{s.tokenizer}"] = 0
        for name, p in self.named_parameters():
            if name.startswith("streams."):
                counts[f"stream:{self.config.streams[int(name.split('.')[1])].tokenizer}"] += p.numel()
            elif ".cross." in name:
                block = self.blocks[int(name.split(".")[1])]
                s = block.reads[int(name.split(".")[3])]
                counts[f"cross:{self.config.streams[s].tokenizer}"] += p.numel()
            elif name.startswith("blocks."):
                counts["main"] += p.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def flops_per_token(self):
        """Training FLOPs per main token (forward + backward), nanoGPT/PaLM convention: 6 per weight per
        element, plus 12 * layers * width * keys attended (attention counted dense up to its window).
        Side streams run over their whole budget, padding included: that is what the hardware does."""
        c = self.config
        T = c.block_size
        block_params = lambda b: sum(p.numel() for n, p in b.named_parameters() if not n.startswith("cross."))
        flops = 6 * (sum(block_params(b) for b in self.blocks) + c.n_embd * padded(c.vocab_size))
        flops += 12 * c.n_layer * c.n_embd * T
        for sc, stream in zip(c.streams, self.streams):
            per_token = sc.budget / T  # side elements computed per main token
            flops += per_token * (6 * sum(block_params(b) for b in stream.blocks)
                                  + 12 * sc.n_layer * sc.n_embd * min(sc.window, sc.budget))
            keys = sc.budget if sc.locality is None else min(sc.budget, (sc.locality + 1) * per_token)
            for _ in sc.cross_layers:
                flops += 6 * 2 * c.n_embd * sc.n_embd           # query and output projections
                flops += per_token * 6 * 2 * sc.n_embd * sc.n_embd  # key and value projections
                flops += 12 * sc.n_embd * keys
        return flops

    def configure_optimizer(self, weight_decay, lr, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")


def batch_inputs(batch, device):
    """Model inputs from a collated batch (data.collate), moved to `device`."""
    to = lambda t: t.to(device, non_blocking=True)
    return dict(idx=to(batch["idx"]), targets=to(batch["targets"]), tok_start=to(batch["tok_start"]),
                tok_end=to(batch["tok_end"]), sides=[tuple(map(to, s)) for s in batch["sides"]])


def load_checkpoint(path, device="cpu"):
    """A trained model from train.py's checkpoint (a file, or an out_dir holding ckpt.pt), in eval mode.
    Returns (model, checkpoint dict without the weights and optimizer)."""
    import os
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.exists(path):
        raise SystemExit(f"error: no checkpoint at {path}: train one with train.py (it writes <out_dir>/ckpt.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        config = GPTConfig(**ckpt["model_config"])
    except Exception as e:
        raise SystemExit(f"error: {path} is not a readable bytecross checkpoint ({type(e).__name__}: {e})")
    model = GPT(config)
    try:
        model.load_state_dict(ckpt.pop("model"))
    except RuntimeError as e:
        raise SystemExit(f"error: {path} does not fit this version of model.py: {str(e)[:500]}")
    ckpt.pop("optimizer", None)
    model.to(device).eval()
    return model, ckpt
