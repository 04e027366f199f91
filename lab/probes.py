"""
The probes of evaluate.py, each a function of a Scorer (lab/scorer.py): text bits-per-byte, the cost
of noise and of non-canonical segmentation in the context, character tasks and multiple-choice
files, and what each side stream's cross-attention adds (branch usage).
"""
import functools
import math
import re

import numpy as np
import torch

from data import Corpus
from perturb import noise, noncanonical

LN2 = math.log(2)

# ------------------------------------------------------------------------------------------------
# text bpb

def text_bpb(scorer, data, windows=0, hooks=None):
    """Bits per byte of `data` (documents, each preceded by 0xFF): non-overlapping windows of
    block_size tokens from the start (the last one shorter), every target but end-of-text counted,
    as train.py's val bpb. windows > 0: only that many full windows, evenly spaced, exactly as
    train.py picks its eval_tokens / block_size validation windows. hooks (BranchHooks): count the
    cross-attention norms at scored tokens."""
    tok = scorer.main_tok
    corpus = Corpus.from_bytes(data, tok, scorer.side_toks)
    T, starts = scorer.T, list(range(0, corpus.n_tokens - 1, scorer.T))
    if windows:
        if corpus.n_windows(T) == 0:
            raise SystemExit(f"error: --text_windows: the text has no full window of block_size "
                             f"{T} tokens")
        spread = np.linspace(0, corpus.n_windows(T) - 1, windows).astype(int)
        starts = [int(w) * T for w in spread]
    lost0 = scorer.lost.copy()
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for chunk in scorer.chunks([T] * len(starts), "text bpb windows"):
            entries = [(corpus, starts[i], min(T, corpus.n_tokens - 1 - starts[i])) for i in chunk]
            inputs, batch = scorer.inputs(entries)
            with scorer.autocast:
                _, loss = scorer.model(**inputs, reduction="none")
            tb = batch["target_bytes"].to(loss.device)
            nats += float(loss.float()[tb > 0].cpu().double().sum())  # on the CPU: MPS has no float64
            nbytes += int(tb.sum())
            if hooks is not None:
                hooks.count(tb > 0)
    if nbytes == 0:
        raise SystemExit("error: the text is too short to score (it needs at least two tokens)")
    return dict(bpb=nats / (LN2 * nbytes), bytes=nbytes, tokens=int(corpus.n_tokens),
                windows=len(starts), lost_tokens=(scorer.lost - lost0).tolist())

# ------------------------------------------------------------------------------------------------
# noise and segmentation (a continuation's bpb after a changed context)

def pairs_bpb(scorer, contexts, conts, what):
    """bpb of the continuations, each after its context (given as ids), pooled over all pairs."""
    tok = scorer.main_tok
    seqs = [([tok.eot] + list(c) + list(k), len(k)) for c, k in zip(contexts, conts)]
    losses = scorer.continuation_losses(seqs, what)
    nbytes = sum(len(tok.decode(k)) for k in conts)
    return sum(float(l.sum()) for l in losses) / (LN2 * nbytes)


def noise_robustness(scorer, pairs, kinds, seed):
    """The continuations' bpb after the clean contexts, then after the contexts noised by each kind
    (delta: noised - clean)."""
    tok = scorer.main_tok
    conts = [tok.encode(c) for _, c in pairs]
    clean = pairs_bpb(scorer, [tok.encode(x) for x, _ in pairs], conts, "noise: clean")
    out = {"clean_bpb": clean, "kinds": {}}
    for kind, rate in kinds.items():
        noisy = [noise(x, kind, rate, f"{seed}/{i}") for i, (x, _) in enumerate(pairs)]
        bpb = pairs_bpb(scorer, [tok.encode(x) for x in noisy], conts, f"noise: {kind}")
        out["kinds"][kind] = dict(rate=rate, bpb=bpb, delta=bpb - clean,
                                  context_chars=float(np.mean([len(x) for x in noisy])))
    return out


def segmentation_robustness(scorer, pairs, rates, seed):
    """The continuations' bpb after the canonically tokenized contexts, then after the same bytes
    tokenized non-canonically at each rate (delta: non-canonical - canonical)."""
    tok = scorer.main_tok
    conts = [tok.encode(c) for _, c in pairs]
    canon = [tok.encode(x) for x, _ in pairs]
    base = pairs_bpb(scorer, canon, conts, "segmentation: canonical")
    out = {"canonical_bpb": base, "context_tokens": sum(map(len, canon)), "rates": {}}
    if tok.enc is None:
        out["note"] = "byte-level main tokenizer: no token can be split"
    for rate in rates:
        split = [noncanonical(tok, c, rate, f"{seed}/{i}") for i, c in enumerate(canon)]
        bpb = base
        if tok.enc:
            bpb = pairs_bpb(scorer, [s for s, _ in split], conts, f"segmentation: rate {rate}")
        out["rates"][str(rate)] = dict(rate=rate, bpb=bpb, delta=bpb - base,
                                       tokens_split=sum(k for _, k in split),
                                       context_tokens=sum(len(s) for s, _ in split))
    return out

# ------------------------------------------------------------------------------------------------
# character tasks and multiple-choice files

def accuracy(scores, labels):
    """Accuracy by summed and by per-byte log-likelihood (ties count against the answer)."""
    def acc(j):
        return float(np.mean([all(s[label][j] > x[j] for m, x in enumerate(s) if m != label)
                              for s, label in zip(scores, labels)]))
    return acc(0), acc(1)


def exact_match(generated, answer):
    """Whether greedy generation wrote the answer, then ended the line."""
    head = re.split(rb"[\n\xff]", generated, maxsplit=1)
    return len(head) == 2 and head[0] == answer.encode("utf-8")


def char_tasks(scorer, items, group=""):
    """items: family -> tasks.eval_items(...). Accuracy against distractors and greedy exact
    match."""
    tok, out, what = scorer.main_tok, {}, f"tasks ({group})" if group else "tasks"
    for family, its in items.items():
        if not its:
            continue
        pairs = [(it["context"], it["choices"]) for it in its]
        scores = scorer.choice_scores(pairs, f"{what}: {family} choices")
        acc, acc_norm = accuracy(scores, [it["label"] for it in its])
        seqs = [[tok.eot] + tok.encode(it["context"]) for it in its]
        max_new = [len(tok.encode(it["answer"])) + 4 for it in its]
        gen = scorer.greedy(seqs, max_new, f"{what}: {family} generation")
        exact = [exact_match(g, it["answer"]) for g, it in zip(gen, its)]
        examples = [dict(context=it["context"], answer=it["answer"],
                         generated=g.decode("utf-8", "replace")) for it, g in zip(its[:3], gen)]
        out[family] = dict(n=len(its), acc=acc, acc_norm=acc_norm, exact=float(np.mean(exact)),
                           chance=float(np.mean([1 / len(it["choices"]) for it in its])),
                           examples=examples)
    fams = list(out)
    if fams:
        out["mean"] = {k: float(np.mean([out[f][k] for f in fams]))
                       for k in ("acc", "acc_norm", "exact", "chance")}
        out["mean"]["n"] = sum(out[f]["n"] for f in fams)
    return out


def multiple_choice(scorer, files):
    """Accuracy on each multiple-choice probe file (name -> (path, items))."""
    out = {}
    for name, (path, items) in files.items():
        pairs = [(it["context"], it["choices"]) for it in items]
        scores = scorer.choice_scores(pairs, f"probe {name}")
        acc, acc_norm = accuracy(scores, [it["answer"] for it in items])
        out[name] = dict(path=path, n=len(items), acc=acc, acc_norm=acc_norm,
                         chance=float(np.mean([1 / len(it["choices"]) for it in items])))
    return out


def choice_accuracy(scorer, items, what):
    """items: family -> task items. Mean over families of (acc, acc_norm) against distractors (no
    generation)."""
    fams = [f for f, its in items.items() if its]
    flat = [it for f in fams for it in items[f]]
    scores = scorer.choice_scores([(it["context"], it["choices"]) for it in flat], what)
    per_family, k = [], 0
    for f in fams:
        n = len(items[f])
        per_family.append(accuracy(scores[k:k + n], [it["label"] for it in items[f]]))
        k += n
    return tuple(float(v) for v in np.mean(per_family, axis=0))

# ------------------------------------------------------------------------------------------------
# branch usage (what each side stream's cross-attention adds, and what zeroing it costs)

class BranchHooks:
    """Forward hooks on the cross-attention of a model (model.blocks[l].cross, reading the side
    streams model.blocks[l].reads): zero what chosen streams add to the residual (an ablation), and
    measure how much they add, against the residual entering the block (a Block's first argument,
    x)."""

    def __init__(self, model):
        self.zeroed, self.recording = set(), False
        # norms (B, T) of the last pass: residual by layer, cross-attention by (layer, stream)
        self.last = {}
        self.sums = {}  # (layer, stream) -> [sum of cross-attention norms, sum of residual norms]
        self.handles = []
        for l, block in enumerate(model.blocks):
            if len(block.cross):
                hook = functools.partial(self._enter, l)
                self.handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
            for s, cross in zip(block.reads, block.cross):
                hook = functools.partial(self._added, l, s)
                self.handles.append(cross.register_forward_hook(hook))

    def _enter(self, layer, block, args, kwargs):
        if self.recording:
            self.last[layer] = (args[0] if args else kwargs["x"]).float().norm(dim=-1)

    def _added(self, layer, s, cross, args, out):
        if s in self.zeroed:
            return torch.zeros_like(out)
        if self.recording:
            self.last[layer, s] = out.float().norm(dim=-1)

    def count(self, mask):
        """Add the norms of the last pass at the tokens where mask (B, T) holds."""
        for key, n in self.last.items():
            if isinstance(key, tuple):
                x = self.last[key[0]]
                sums = self.sums.setdefault(key, [0.0, 0.0])
                # reshape: a packed batch may run its B*T tokens through cross-attention as one row
                sums[0] += float(n.reshape(x.shape)[mask].sum())
                sums[1] += float(x[mask].sum())
        self.last.clear()

    def norm_share(self, s):
        """Per layer that reads stream s: sum of |cross-attention output| / sum of |residual
        entering it|."""
        return {str(l): a / b for (l, t), (a, b) in sorted(self.sums.items()) if t == s and b > 0}

    def remove(self):
        for h in self.handles:
            h.remove()


def branch_usage(scorer, data, data2, task_items, windows=0):
    """How much the model uses each side stream. The intact model's text bpb (of each domain) and
    task accuracy, then the same with one stream's cross-attention output zeroed in every layer that
    reads it (delta = zeroed - intact); and per layer, the norm of what the cross-attention adds
    against the norm of the residual entering the layer, over the scored tokens of the text (intact
    model)."""
    model = scorer.model
    names = [s.tokenizer for s in model.config.streams]
    if not names:
        return {"streams": {}}  # a baseline: nothing to zero
    hooks = BranchHooks(model)

    def measure(what, record=False):
        hooks.recording = record  # norms of the intact model on the text only
        m = {"text_bpb": text_bpb(scorer, data, windows, hooks)["bpb"]}
        hooks.recording = False
        if data2:
            m["text2_bpb"] = text_bpb(scorer, data2, windows)["bpb"]
        if task_items:
            m["task_acc"], m["task_acc_norm"] = choice_accuracy(scorer, task_items,
                                                                f"{what}: task choices")
        return m

    try:
        out = measure("branch: intact", record=True)
        out["streams"] = {}
        for s, name in enumerate(names):
            hooks.zeroed = {s}
            zeroed = measure(f"branch: {name} zeroed")
            layers = [l for l, b in enumerate(model.blocks) if s in b.reads]
            delta = {k: v - out[k] for k, v in zeroed.items()}
            out["streams"][name] = dict(layers=layers, norm_share=hooks.norm_share(s),
                                        zeroed=zeroed, delta=delta)
    finally:
        hooks.remove()
    return out
