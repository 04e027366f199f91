"""
bytecross: a token-level GPT that reads, through cross-attention, small causal GPTs running over
other streams of the same text (UTF-8 bytes by default, or tokens of other tokenizers).

    main stream:  GPT over BPE tokens (width n_embd), causal self-attention
    side stream:  small GPT over bytes (width stream n_embd), causal sliding-window self-attention
    cross:        in chosen main layers, token i attends to side elements that lie within
                  tokens 0..i

Who may see what is defined by byte offsets alone (see data.py): token i reads side element m iff
    known[m] <= tok_end[i]                       (m is fully fixed by bytes of tokens 0..i)
    and end[m] > tok_start[i - k]                (only with locality k: m ends inside tokens i-k..i)
Both bounds are monotone in m, so each token reads one contiguous interval [lo_i, hi_i) of
elements. The data loader computes these intervals (data.visible_intervals, data.collate); the
model only applies them, through attention.py. With no streams the model is a plain GPT:
RMSNorm, rotary embeddings, QK-norm, ReLU^2 MLP, tied embeddings.
"""
import math
import re
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import attend, interval_mask, own_elements, sliding_window, stream_block_lists


@dataclass
class StreamConfig:
    tokenizer: str = "bytes"        # 'bytes', a tiktoken name ('gpt2', 'cl100k_base') or a
                                    # .tiktoken file
    vocab_size: int = 256           # set from the tokenizer by train.py
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    window: int = 256               # sliding attention window over the stream's own elements
    budget: int = 4096              # most elements one window keeps (tokens past them read no
                                    # own bytes)
    packed_budget: int = 0          # >0: in training, a batch's windows share one row of
                                    # B * packed_budget elements (set near the mean per window:
                                    # no padding to compute)
    cross_layers: object = (0,)     # main layers that read this stream: a list of indices, "all",
                                    # or "every3" (layers 0, 3, 6, ...; any k >= 1)
    locality: object = None         # k: token i reads only elements ending inside tokens
                                    # i-k..i; None: all
    mixer: str = "attention"        # how the stream mixes its own elements: "attention",
                                    # "recurrent" or "conv" (a short causal convolution)
    conv_width: int = 8             # mixer "conv": each element mixes itself and the conv_width - 1
                                    # elements before it in its window
    aux_loss: float = 0.0           # >0: in training, add this weight x the stream's own
                                    # next-element loss (a head tied to its embedding)
    shared_kv: bool = False         # True: the reading layers share one key/value projection of
                                    # the stream, computed once (else one per layer)
    parallel: bool = False          # True: cross-attention beside the layer's self-attention (one
                                    # normed input, fused query projections), not after it


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
                    raise ValueError(f"unknown stream option(s) {sorted(bad)}; "
                                     f"valid: {sorted(valid)}")
                s = StreamConfig(**s)
            if isinstance(s.cross_layers, str):
                every = re.fullmatch(r"all|every([1-9]\d*)", s.cross_layers)
                if not every:
                    raise ValueError(f"stream {s.tokenizer}: cross_layers must be a list of layers, 'all' "
                                     f"or 'every<k>' such as 'every3', not {s.cross_layers!r}")
                s.cross_layers = list(range(0, self.n_layer, int(every.group(1) or 1)))
            s.cross_layers = sorted(int(l) for l in s.cross_layers)
            if not all(0 <= l < self.n_layer for l in s.cross_layers):
                raise ValueError(f"stream {s.tokenizer}: cross_layers {s.cross_layers} "
                                 f"outside 0..{self.n_layer - 1}")
            if s.mixer not in ("attention", "recurrent", "conv"):
                raise ValueError(f"stream {s.tokenizer}: mixer must be 'attention', 'recurrent' or "
                                 f"'conv', not {s.mixer!r}")
            if s.conv_width < 1:
                raise ValueError(f"stream {s.tokenizer}: conv_width must be >= 1")
            if s.locality is not None and int(s.locality) < 0:
                raise ValueError(f"stream {s.tokenizer}: locality must be None or >= 0")
            if not s.aux_loss >= 0:
                raise ValueError(f"stream {s.tokenizer}: aux_loss must be >= 0")
            shapes = (("main", self.n_embd, self.n_head), (s.tokenizer, s.n_embd, s.n_head))
            for name, width, heads in shapes:
                if width % heads or (width // heads) % 2:
                    raise ValueError(f"{name}: n_embd {width} must split into n_head {heads} "
                                     f"heads of even size")
            streams.append(s)
        if len({s.tokenizer for s in streams}) != len(streams):
            raise ValueError("each side stream needs its own tokenizer")
        self.streams = streams

# ------------------------------------------------------------------------------------------------
# building blocks

def padded(vocab_size):
    """Embedding rows rounded up to a multiple of 64: faster matrix shapes
    (nanoGPT's 50257 -> 50304)."""
    return -(-vocab_size // 64) * 64


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rope(pos, head_dim, base=10000.0):
    """cos, sin for integer positions pos (..., T): shape (..., 1, T, head_dim/2) to broadcast
    over heads."""
    dims = torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32)
    inv_freq = base ** (-dims / head_dim)
    angles = pos.float()[..., None] * inv_freq
    return angles.cos().unsqueeze(-3), angles.sin().unsqueeze(-3)


def apply_rope(x, cos, sin):
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def heads(t, n_head):
    """(rows, n, n_head * d) -> (rows, n_head, n, d)."""
    return t.view(t.size(0), t.size(1), n_head, -1).transpose(1, 2)


def keys_values(kv, source, n_head, k_rope):
    """Keys (QK-norm, then rotary) and values of `source` by the projection kv, in heads."""
    k, v = (heads(t, n_head) for t in kv(source).chunk(2, dim=-1))
    return apply_rope(norm(k), *k_rope), v


class Attention(nn.Module):
    """Multi-head attention; queries from x, keys and values from `source` (x itself if None), or
    given precomputed as `kv` (a projection shared by several layers: then kv_dim is None)."""

    def __init__(self, q_dim, kv_dim, inner, n_head):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(q_dim, inner, bias=False)
        self.kv = nn.Linear(kv_dim, 2 * inner, bias=False) if kv_dim else None
        self.proj = nn.Linear(inner, q_dim, bias=False)

    def forward(self, x, source, q_rope, k_rope, mask, kv=None, q=None):
        """q: the queries already projected (rows, n, inner), in place of self.q(x)."""
        q = self.q(x) if q is None else q
        R, T, _ = q.shape
        q = norm(heads(q, self.n_head))  # QK-norm, then rotary (none: the keys carry it)
        q = q if q_rope is None else apply_rope(q, *q_rope)
        k, v = kv or keys_values(self.kv, x if source is None else source, self.n_head, k_rope)
        return self.proj(attend(q, k, v, mask).transpose(1, 2).reshape(R, T, -1))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Recurrence(nn.Module):
    """A minimal gated linear recurrence (minGRU), in place of a side stream's self-attention:
        z_t = sigmoid(W_z x_t), h_t = (1 - z_t) * h_{t-1} + z_t * W_h x_t, out_t = W_o h_t
    linear in length and causal by construction. h restarts from 0 at every `reset` (an element
    first in its window), so windows packed back to back in one row never see each other."""

    def __init__(self, dim):
        super().__init__()
        self.zh = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, reset):
        k, h_new = self.zh(x).float().chunk(2, dim=-1)
        a = torch.where(reset[..., None], 0.0, torch.sigmoid(-k))  # 1 - z; 0 at a reset forgets all
        return self.proj(linear_scan(a, torch.sigmoid(k) * h_new).to(x.dtype))


def linear_scan(a, b):
    """h_t = a_t * h_{t-1} + b_t along dim 1 (rows, n, channels), from h = 0."""
    return LinearScan.apply(a, b)


class LinearScan(torch.autograd.Function):
    """The scan's gradient is the same scan run backwards, g_t = dL/dh_t + a_{t+1} g_{t+1}, with
    dL/db = g and dL/da_t = g_t h_{t-1}: so only a and h are kept for the backward pass, not the
    doubling's 2 log2(n) intermediate tensors (34 of 67 MB each for a packed row of 131K bytes,
    128 channels)."""

    @staticmethod
    def forward(ctx, a, b):
        h = doubling_scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad):
        a, h = ctx.saved_tensors
        later = lambda t: F.pad(t[:, 1:], (0, 0, 0, 1))  # t_{t+1}, 0 after the last element
        g = doubling_scan(later(a).flip(1), grad.flip(1)).flip(1)
        return g * F.pad(h[:, :-1], (0, 0, 1, 0)), g


def doubling_scan(a, b):
    """The scan by recursive doubling (Hillis-Steele): before the step with shift s, b_t is the
    recurrence over the s elements up to t (from state 0) and a_t the product of their decays; a step
    joins each span to the one before it. That is ceil(log2 n) elementwise steps, which torch.compile
    fuses and compiles quickly (a Python loop over elements unrolls into a graph of hundreds of
    steps). Only products of decays in [0, 1], no logarithms: float32 suffices on any device (MPS has
    no float64)."""
    shift = lambda t, s: F.pad(t[:, :-s], (0, 0, s, 0))  # s elements later, zeros (no state) first
    n, s = a.size(1), 1
    while s < n:
        b = b + a * shift(b, s)
        if 2 * s < n:  # the last step reads no decays
            a = a * shift(a, s)
        s *= 2
    return b


class ShortConv(nn.Module):
    """A gated causal depthwise convolution (the short convolution of Mamba and H3), in place of a
    side stream's self-attention: element m mixes elements m - width + 1 .. m of its own window,
        out = W_o(conv(u) * silu(g)),  (u, g) = W_i x
    a few fused elementwise operations over the elements, where windowed attention needs a kernel
    of its own. `pos` (each element's index in its window) keeps packed windows apart."""

    def __init__(self, dim, width):
        super().__init__()
        self.inp = nn.Linear(dim, 2 * dim, bias=False)
        self.weight = nn.Parameter(torch.empty(width, dim).uniform_(-width ** -0.5, width ** -0.5))
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, pos):
        u, g = self.inp(x).chunk(2, dim=-1)
        y = u * self.weight[0]
        for j in range(1, self.weight.size(0)):
            earlier = F.pad(u[:, :-j], (0, 0, j, 0))  # element m - j, zeros before the row
            y = y + torch.where((pos >= j)[..., None], earlier, 0.0) * self.weight[j]
        return self.proj(y * F.silu(g))


class Block(nn.Module):
    """Pre-norm transformer block; `reads` lists (stream index, width, heads, shared_kv, parallel)
    for cross-attention. A side stream's block may mix its elements by a recurrence
    (mixer="recurrent") or a short convolution (mixer="conv") instead of self-attention."""

    def __init__(self, dim, n_head, dropout, reads=(), mixer="attention", conv_width=8):
        super().__init__()
        self.attn = Attention(dim, dim, dim, n_head) if mixer == "attention" else None
        self.recur = Recurrence(dim) if mixer == "recurrent" else None
        self.conv = ShortConv(dim, conv_width) if mixer == "conv" else None
        self.mlp = MLP(dim)
        # a stream whose key/value projection is shared (GPT.shared_kv) has none here
        self.cross = nn.ModuleList(Attention(dim, None if shared else width, width, heads)
                                   for _, width, heads, shared, _ in reads)
        self.reads = [s for s, *_ in reads]
        self.parallel = [parallel for *_, parallel in reads]
        self.drop = nn.Dropout(dropout)

    def forward(self, x, rope_, mask, read=()):
        """read: per side stream, (states, query rope, key rope, mask, shared keys and values) from
        GPT.run_stream. A recurrent block's mask is its reset mask (rows, elements), a convolution's
        the elements' positions in their windows."""
        if self.recur is not None:
            x = x + self.drop(self.recur(norm(x), mask))
        elif self.conv is not None:
            x = x + self.drop(self.conv(norm(x), mask))
        elif any(self.parallel):
            x = x + self.drop(self.attention_beside_cross(norm(x), rope_, mask, read))
        else:
            x = x + self.drop(self.attn(norm(x), None, rope_, rope_, mask))
        for s, xattn, parallel in zip(self.reads, self.cross, self.parallel):
            if parallel:
                continue
            h, q_rope, k_rope, cross_mask, kv = read[s]
            # a packed stream: all B*T tokens are one row
            q = norm(x).view(h.size(0), -1, x.size(-1))
            x = x + self.drop(xattn(q, h, q_rope, k_rope, cross_mask, kv).view_as(x))
        return x + self.drop(self.mlp(norm(x)))

    def attention_beside_cross(self, x, rope_, mask, read):
        """Self-attention and the parallel cross-attentions on one normed input x, summed: their
        query projections run as one matmul (the weights concatenated: the parameters are those of
        separate projections). Each cross-attention is still called as a module, so that hooks
        see what it adds (evaluate.py zeroes it there)."""
        cross = [(s, c) for s, c, parallel in zip(self.reads, self.cross, self.parallel) if parallel]
        mods = [self.attn] + [c for _, c in cross]
        qs = F.linear(x, torch.cat([m.q.weight for m in mods])).split(
            [m.q.out_features for m in mods], dim=-1)
        y = self.attn(x, None, rope_, rope_, mask, q=qs[0])
        for (s, xattn), q in zip(cross, qs[1:]):
            h, q_rope, k_rope, cross_mask, kv = read[s]
            q = q.reshape(h.size(0), -1, q.size(-1))  # a packed stream: all B*T tokens are one row
            y = y + xattn(None, h, q_rope, k_rope, cross_mask, kv, q=q).view_as(y)
        return y


class StreamGPT(nn.Module):
    """A small causal GPT over one side stream, with sliding-window attention (or a recurrence, or a
    short convolution); no head."""

    def __init__(self, sc, dropout):
        super().__init__()
        self.mixer = sc.mixer
        self.wte = nn.Embedding(padded(sc.vocab_size), sc.n_embd)
        self.blocks = nn.ModuleList(Block(sc.n_embd, sc.n_head, dropout, mixer=sc.mixer,
                                          conv_width=sc.conv_width)
                                    for _ in range(sc.n_layer))

    def forward(self, ids, rope_, mask):
        """mask: self-attention's; for a recurrent stream its reset mask (True where a window
        starts), for a convolution the elements' positions in their windows."""
        x = self.wte(ids)
        for block in self.blocks:
            x = block(x, rope_, mask)
        return norm(x)

def next_element_targets(side):
    """For a side stream's rows (data.collate): the id of element m + 1 where it follows m in the
    same window, else -1 (a window's last element, padding). Shape (rows, elements - 1)."""
    ids, pos, end = side["ids"], side["pos"], side["end"]
    follows = (pos[:, 1:] == pos[:, :-1] + 1) & (end[:, 1:] != torch.iinfo(torch.int32).max)
    return torch.where(follows, ids[:, 1:], -1)


def gather_rope(table, pos):
    """Rotary phases at integer positions pos (rows, n) from a table (2, 1, P, d): (cos, sin), each
    (rows, 1, n, d). Positions past the table take its last phase."""
    phases = table[:, 0][:, pos.clamp(0, table.size(2) - 1)]
    return phases[0].unsqueeze(1), phases[1].unsqueeze(1)

# ------------------------------------------------------------------------------------------------

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        # padded ids are never inputs or targets
        self.wte = nn.Embedding(padded(c.vocab_size), c.n_embd)
        self.streams = nn.ModuleList(StreamGPT(sc, c.dropout) for sc in c.streams)
        reads = [[(s, sc.n_embd, sc.n_head, sc.shared_kv, sc.parallel)
                  for s, sc in enumerate(c.streams) if l in sc.cross_layers]
                 for l in range(c.n_layer)]
        # per stream with shared_kv, the one key/value projection that all its reading layers use
        self.shared_kv = nn.ModuleDict({str(s): nn.Linear(sc.n_embd, 2 * sc.n_embd, bias=False)
                                        for s, sc in enumerate(c.streams) if sc.shared_kv})
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, c.dropout, reads[l])
                                    for l in range(c.n_layer))
        self.lm_head = nn.Linear(c.n_embd, padded(c.vocab_size), bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.attention = "sdpa"  # or "flex"; a runtime choice, not part of the architecture
        self.own_kernel = False  # flex, locality 0, a GPU: own elements read by kernels.py
        # flex: side streams' sliding-window self-attention chunk by chunk in SDPA, not by block masks
        self.chunked_windows = False
        # training only, when train.py switches it on: zero each token's embedding with probability
        # embed_dropout (a tensor: a schedule changes it without recompiling), so that its bytes
        # must tell
        self.drop_embeddings = False
        self.register_buffer("embed_dropout", torch.zeros(()), persistent=False)
        # rotary tables, computed once, not inside every compiled kernel: main positions, side
        # positions, and byte offsets for cross-attention (up to 16 bytes per token on average;
        # later ones saturate)
        table = lambda n, width, heads: torch.stack(rope(torch.arange(n), width // heads))
        self.register_buffer("main_rope", table(c.block_size, c.n_embd, c.n_head), persistent=False)
        for s, sc in enumerate(c.streams):
            stream_rope = table(sc.budget, sc.n_embd, sc.n_head)
            self.register_buffer(f"stream_rope{s}", stream_rope, persistent=False)
            offsets = max(sc.budget, 16 * c.block_size) + 1
            cross_rope = table(offsets, sc.n_embd, sc.n_head)
            self.register_buffer(f"cross_rope{s}", cross_rope, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections, scaled by depth (GPT-2)
                if name.startswith("blocks"):
                    depth = c.n_layer
                else:
                    depth = c.streams[int(name.split(".")[1])].n_layer
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))
            if ".cross." in name and name.endswith("proj.weight"):
                # each stream starts as a no-op: the model starts as the plain GPT
                nn.init.zeros_(p)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets=None, tok_end=None, sides=(), reduction="mean"):
        """idx, targets: (B, T). tok_end: (B, T) byte offset where each token ends in its window.
        sides: per stream, the dict that data.collate builds (elements, and who sees what).
        Returns (logits, loss); logits cover the padded vocabulary (ids >= vocab_size never
        occur). With targets the logits come detached: an output that needs a gradient but gets
        none costs a zero-filled gradient of its size (B x T x 50,304) every training step."""
        c, (B, T) = self.config, idx.shape
        assert T <= c.block_size, f"sequence of {T} tokens is longer than block_size {c.block_size}"
        assert len(sides) == len(c.streams), (
            f"model has {len(c.streams)} side streams, got {len(sides)}")
        needs = [(st.mixer == "attention" and not self.chunked_windows,
                  not self.reads_own_elements(s)) for s, st in enumerate(self.streams)]
        # built in one call outside the compiled graph (a break at the top of forward: still one
        # graph); when this forward pass is itself compiled for a GPU, by a graph of their own
        compiled = torch.compiler.is_compiling() and idx.is_cuda
        block_lists = (stream_block_lists(sides, needs, compiled)
                       if self.attention == "flex" and sides else [(None, None)] * len(sides))
        read = [self.run_stream(s, side, tok_end, block_lists[s]) for s, side in enumerate(sides)]
        x = self.wte(idx)
        if self.training and self.drop_embeddings:
            x = x * (torch.rand(B, T, 1, device=x.device) >= self.embed_dropout).to(x.dtype)
        main_rope = (self.main_rope[0, :, :T], self.main_rope[1, :, :T])
        for block in self.blocks:
            x = block(x, main_rope, "causal", read)
        logits = self.lm_head(norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1, reduction=reduction)
        if reduction != "mean":
            return logits.detach(), loss.view(B, T)
        if self.training:  # auxiliary losses train the side streams; evaluation reports the main loss
            for s, (side, (h, *_)) in enumerate(zip(sides, read)):
                if c.streams[s].aux_loss > 0:
                    loss = loss + c.streams[s].aux_loss * self.stream_loss(s, h, side)
        return logits.detach(), loss

    def stream_loss(self, s, h, side):
        """Side stream s's own next-element loss: element m predicts element m + 1 of its window
        (from elements <= m only: the stream is causal), through a head tied to its embedding."""
        logits = F.linear(h[:, :-1], self.streams[s].wte.weight)
        targets = next_element_targets(side)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    def run_stream(self, s, side, tok_end, block_lists):
        """Side stream s over its elements; returns what cross-attention into it needs: the stream's
        states, rotary phases of queries (token ends) and keys (element ends; when each element has
        one reader, none for queries and the keys' offsets from their reader's end), the mask, and with
        shared_kv the keys and values (else None: each layer projects its own).
        block_lists: FlexAttention's for (self-attention, cross-attention), or Nones for SDPA."""
        ids, (own_lists, cross_lists) = side["ids"], block_lists
        mixer, own_rope = self.streams[s].mixer, None
        if mixer == "recurrent":  # the recurrence restarts at each window's first element
            own_mask = side["pos"] == 0
        elif mixer == "conv":  # the convolution reads no element before its window's first
            own_mask = side["pos"]
        else:
            own_rope = gather_rope(getattr(self, f"stream_rope{s}"), side["pos"])
            if self.attention == "flex" and self.chunked_windows:
                own_mask = sliding_window(side["pos"], self.config.streams[s].window)
            else:
                own_mask = interval_mask(side["self_lo"], side["self_hi"], ids.size(1), own_lists)
        h = self.streams[s](ids, own_rope, own_mask)
        offsets = getattr(self, f"cross_rope{s}")
        tok_end, lo, hi = tok_end.reshape(ids.size(0), -1), side["cross_lo"], side["cross_hi"]
        if self.reads_own_elements(s):
            cross_mask = own_elements(lo, hi, ids.size(1), self.own_kernel)
            # each element has one reader: its key turns by its offset from that token's end (<= 0)
            # and the queries not at all, the same scores as turning both (rotary is relative),
            # without a rotation of the queries in every reading layer
            back = (tok_end.gather(1, cross_mask.owner) - side["end"]).clamp_min(0)
            cos, sin = gather_rope(offsets, back)
            q_rope, k_rope = None, (cos, -sin)
        else:
            cross_mask = interval_mask(lo, hi, ids.size(1), cross_lists)
            q_rope, k_rope = gather_rope(offsets, tok_end), gather_rope(offsets, side["end"])
        kv = None
        if str(s) in self.shared_kv:  # keys and values once for every reading layer
            kv = keys_values(self.shared_kv[str(s)], h, self.config.streams[s].n_head, k_rope)
        return h, q_rope, k_rope, cross_mask, kv

    def reads_own_elements(self, s):
        """Whether cross-attention into stream s runs by gathers over its elements (flex path,
        locality 0: each token reads only its own elements) rather than as a block mask."""
        return self.attention == "flex" and self.config.streams[s].locality == 0

    # --------------------------------------------------------------------------------------------
    # accounting

    def param_counts(self):
        """Parameters split into embeddings, main transformer, each side stream, and
        cross-attention."""
        counts = {"embeddings": self.wte.weight.numel(), "main": 0}
        for s in self.config.streams:
            counts[f"stream:{s.tokenizer}"] = 0
            counts[f"cross:{s.tokenizer}"] = 0
        for name, p in self.named_parameters():
            if name.startswith("streams."):
                stream = self.config.streams[int(name.split(".")[1])]
                counts[f"stream:{stream.tokenizer}"] += p.numel()
            elif ".cross." in name:
                block = self.blocks[int(name.split(".")[1])]
                s = block.reads[int(name.split(".")[3])]
                counts[f"cross:{self.config.streams[s].tokenizer}"] += p.numel()
            elif name.startswith("shared_kv."):
                counts[f"cross:{self.config.streams[int(name.split('.')[1])].tokenizer}"] += p.numel()
            elif name.startswith("blocks."):
                counts["main"] += p.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def flops_per_token(self, measured=None):
        """Training FLOPs per main token (forward + backward), nanoGPT/PaLM convention: 6 per weight
        per element, plus 12 * layers * width * keys attended (causal attention counted as dense, as
        nanoGPT). Default: what the hardware computes, side streams over their whole rows (padding
        included). `measured`: per stream, dict(elements=per main token, self_keys=per element,
        cross_keys=per token), counted on a real batch (data.useful_counts): the useful FLOPs
        instead."""
        c = self.config
        T = c.block_size
        block_params = lambda b: sum(p.numel() for n, p in b.named_parameters()
                                     if not n.startswith("cross."))  # without cross-attention
        flops = 6 * (sum(block_params(b) for b in self.blocks) + c.n_embd * padded(c.vocab_size))
        flops += 12 * c.n_layer * c.n_embd * T
        for s, (sc, stream) in enumerate(zip(c.streams, self.streams)):
            per_token = (sc.packed_budget or sc.budget) / T  # side elements computed per main token
            self_keys = min(sc.window, per_token * T)
            keys = per_token * T  # side elements each token reads by cross-attention
            if sc.locality is not None:
                keys = min(keys, (sc.locality + 1) * per_token)
            if measured:
                m = measured[s]
                per_token, self_keys, keys = m["elements"], m["self_keys"], m["cross_keys"]
            stream_params = sum(block_params(b) for b in stream.blocks)
            # a recurrence costs its weights alone (in stream_params): no attention term
            attention = 12 * sc.n_layer * sc.n_embd * self_keys if sc.mixer == "attention" else 0
            flops += per_token * (6 * stream_params + attention)
            kv_projections = 1 if sc.shared_kv else len(sc.cross_layers)
            flops += kv_projections * per_token * 6 * 2 * sc.n_embd * sc.n_embd  # keys and values
            for _ in sc.cross_layers:
                flops += 6 * 2 * c.n_embd * sc.n_embd               # query and output projections
                flops += 12 * sc.n_embd * keys
        return flops

    def configure_optimizer(self, weight_decay, lr, betas, device_type, branch_lr_scale=1.0):
        """AdamW; matrices decay, vectors do not. With branch_lr_scale != 1, the side streams and
        cross-attention get their own groups, whose `lr_scale` train.py applies to the schedule."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        in_branch = lambda n: n.startswith(("streams.", "shared_kv.")) or ".cross." in n
        parts = [(lambda n: True, 1.0)] if branch_lr_scale == 1.0 else [
            (lambda n: not in_branch(n), 1.0), (in_branch, branch_lr_scale)]
        groups = [{"params": [p for n, p in named if part(n) and (p.dim() >= 2) == matrix],
                   "weight_decay": weight_decay if matrix else 0.0, "lr_scale": scale}
                  for part, scale in parts for matrix in (True, False)]
        # empty groups stay (no vectors today): checkpoints keep one layout per scale setting
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")
