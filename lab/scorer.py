"""
The Scorer: one model run on many short texts, batched by length, each text a new document (it
starts with the end-of-text token). Every probe (lab/probes.py) scores through it.
"""
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from data import Corpus, batch_inputs, make_batch
from tokenizers import EOT_BYTE


def duration(seconds):
    """Readable at any length: 42s, 3.5min, 2.1h."""
    if not seconds < 1e7:  # also nan
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}min" if seconds < 5400 else f"{seconds / 3600:.1f}h"


def progress(name, what, done, total, t0, unit=""):
    """A progress line on stderr (rewritten in place): done/total, time so far, and the time left at
    the pace so far."""
    spent = time.time() - t0
    left = spent / done * (total - done) if done else float("nan")
    print(f"\r  [{name}] {what}: {unit}{done}/{total} ({100 * done / max(1, total):.0f}%), "
          f"{duration(spent)}, eta {duration(left)}   ", end="", file=sys.stderr, flush=True)


class Scorer:
    """One model on many short texts. Each sequence of ids starts with end-of-text (a new document);
    one longer than block_size is cropped from the left, keeping what is scored."""

    def __init__(self, model, main_tok, side_toks, device, batch_tokens, autocast=nullcontext(),
                 name=""):
        self.model, self.main_tok, self.side_toks, self.device = model, main_tok, side_toks, device
        self.batch_tokens, self.autocast, self.name = batch_tokens, autocast, name
        self.T, self.V = model.config.block_size, main_tok.vocab_size
        self.lost = np.zeros(len(side_toks), np.int64)  # tokens that could not see all their bytes

    def corpus(self, ids):
        # the side streams are rebuilt from the bytes that the ids spell
        return Corpus.from_bytes(self.main_tok.decode(ids), self.main_tok, self.side_toks,
                                 main_ids=ids)

    def inputs(self, entries):
        """Model inputs for windows (corpus, p, n): n inputs from token p, padded to the longest."""
        width = max(n for _, _, n in entries)
        # trim: side rows end at the longest window's last element, so that short windows cost
        # little
        batch = make_batch(entries, self.side_toks, self.model.config.streams, width, trim=True)
        inputs = batch_inputs(batch, self.device)
        self.lost += batch["lost"].sum(0).numpy()
        return inputs, batch

    def chunks(self, lengths, what=""):
        """Batches of indices, similar lengths together, each at most batch_tokens once padded (the
        logits, batch x length x vocabulary, are what fills memory); progress on stderr for long
        runs."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        out = [[]]
        for i in order:  # ascending lengths: the item just added is the longest of its batch
            if out[-1] and (len(out[-1]) + 1) * min(lengths[i], self.T) > self.batch_tokens:
                out.append([])
            out[-1].append(i)
        t0 = time.time()
        for done, chunk in enumerate(out, 1):
            yield chunk
            # batches hold about the same number of tokens: a fair pace
            if what and time.time() - t0 > 2:
                progress(self.name, what, done, len(out), t0, unit="batch ")
        if what and time.time() - t0 > 2:
            print(file=sys.stderr)

    @torch.no_grad()
    def continuation_losses(self, seqs, what=""):
        """seqs: (ids, m). Per sequence, the losses (nats) of its last m ids, each given all ids
        before it."""
        out = [None] * len(seqs)
        for chunk in self.chunks([len(s[0]) for s in seqs], what):
            entries = []
            for i in chunk:
                ids, m = seqs[i]
                n = min(len(ids) - 1, self.T)
                if not 0 < m <= n:
                    raise ValueError(f"a scored continuation of {m} tokens does not fit into "
                                     f"block_size {self.T}: use shorter continuations "
                                     f"(--cont_chars) or probe choices")
                entries.append((self.corpus(ids), len(ids) - 1 - n, n))
            inputs, _ = self.inputs(entries)
            with self.autocast:
                _, loss = self.model(**inputs, reduction="none")
            loss = loss.float().cpu().numpy()
            for row, i in enumerate(chunk):
                n, m = entries[row][2], seqs[i][1]
                out[i] = loss[row, n - m:n].astype(np.float64)
        return out

    @torch.no_grad()
    def next_ids(self, seqs):
        """The most likely next token (over the real vocabulary) after each sequence of ids."""
        out = [None] * len(seqs)
        for chunk in self.chunks([len(s) for s in seqs]):
            entries = [(self.corpus(seqs[i]), max(0, len(seqs[i]) - self.T),
                        min(len(seqs[i]), self.T)) for i in chunk]
            inputs, _ = self.inputs(entries)
            inputs["targets"] = None
            with self.autocast:
                logits, _ = self.model(**inputs)
            last = torch.tensor([n - 1 for _, _, n in entries], device=logits.device)
            rows = torch.arange(len(chunk), device=logits.device)
            picked = logits[rows, last, : self.V].argmax(-1)
            for row, i in enumerate(chunk):
                out[i] = int(picked[row])
        return out

    def greedy(self, seqs, max_new, what=""):
        """Greedy continuation of each sequence, until it holds a newline or end-of-text or has
        max_new[i] tokens. Returns the generated bytes (end-of-text as 0xFF)."""
        ids = [list(s) for s in seqs]
        gen = [b"" for _ in seqs]
        ended = lambda g: b"\n" in g or bytes([EOT_BYTE]) in g
        active = [i for i in range(len(seqs)) if max_new[i] > 0]
        step, t0 = 0, time.time()
        while active:
            nxt = self.next_ids([ids[i] for i in active])
            for i, t in zip(active, nxt):
                ids[i].append(t)
                gen[i] += self.main_tok.token_bytes[t]
            step += 1
            active = [i for i in active if step < max_new[i] and not ended(gen[i])]
            if what and time.time() - t0 > 2:  # eta: as if every sequence ran to its longest
                progress(self.name, what, step, max(max_new), t0, unit="step ")
        if what and time.time() - t0 > 2:
            print(file=sys.stderr)
        return gen

    def choice_scores(self, items, what=""):
        """items: (context, choices) strings. Per item, (summed log-likelihood, log-likelihood per
        byte) of each choice given the context; context and choice are tokenized apart (canonical
        tokens of each)."""
        tok, seqs, where = self.main_tok, [], []
        for k, (context, choices) in enumerate(items):
            ctx = [tok.eot] + tok.encode(context)
            for c in choices:
                ids = tok.encode(c)
                seqs.append((ctx + ids, len(ids)))
                where.append((k, len(c.encode("utf-8"))))
        losses = self.continuation_losses(seqs, what)
        out = [[] for _ in items]
        for (k, nbytes), loss in zip(where, losses):
            ll = -float(loss.sum())
            out[k].append((ll, ll / nbytes))
        return out
