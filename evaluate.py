r"""
Tokenization probes: what BPE hides from a model (letters inside tokens, robustness to noise,
indifference to segmentation), measured for one or more checkpoints side by side (baseline or
byte-augmented).

    python evaluate.py out-baseline out-bytes --text data/shakespeare
    python evaluate.py out-a out-b --text gutenberg/val.jsonl.xz --probes probes/*.jsonl \
        --json out-ab/e.json
    python evaluate.py out-a out-b --text data/gutenberg --text2 data/wikipedia
    python evaluate.py out-a --text shakespeare --skip tasks probes --noise drop:0.2,swap:0.1 \
        --seg_rates 0.25,1

Reports, per checkpoint (exact definitions: README, section Evaluation):
  text      bits-per-byte of the text (non-overlapping block_size windows, as train.py's val bpb)
  noise     bpb of a clean continuation after a noised context, against the same after the clean
            context
  segment   bpb of a canonical continuation after a context tokenized non-canonically (same bytes)
            (text, noise and segmentation also for a second domain, --text2)
  tasks     character tasks over held-out words (tasks.py): accuracy against distractors, exact
            match
  task_groups  the same over train words, held-out single-token and held-out multi-token words
  branch    per side stream: bpb and task accuracy with its cross-attention zeroed, and the norm it
            adds
  probes    multiple-choice JSONL files: accuracy by summed and by per-byte log-likelihood
Prints one markdown table (a column per checkpoint) and writes every number, with the settings that
reproduce it, to JSON beside each checkpoint (or --json). Every scored text is a new document: it
starts with the end-of-text token.
"""
import argparse
import functools
import glob
import json
import math
import os
import random
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

import tasks
from checkpoint import open_trained
from data import Corpus, batch_inputs, make_batch, read_array, utf8, write_atomic
from runtime import pick_device
from sources import Progress, expand, read_documents, tagged_documents
from perturb import NOISE_DEFAULTS, noise, noncanonical, parse_noise
from tokenizers import EOT_BYTE

# The file reads top to bottom: the command line; the inputs (text, context/continuation pairs,
# task words, probe files); the Scorer, which runs a model on many short texts; the probes (text
# bpb, noise and segmentation, character tasks and multiple choice, branch usage); the report
# (markdown table and JSON); last, main: the shared inputs, then each checkpoint through every
# probe, then the report.

LN2 = math.log(2)
# the metric groups --skip can leave out, in the order they run
GROUPS = ("text", "noise", "segmentation", "tasks", "task_groups", "branch", "probes")
TASK_GROUPS = {"train": "train words", "heldout_single_token": "held-out single-token words",
               "heldout_multi_token": "held-out multi-token words"}
PROBE_FORMAT = '{"context": str, "choices": [str, ...], "answer": int}'

# ================================================================================================
# the command line

def parser():
    """The command-line options (the module docstring is the help's description)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="training output folders (or checkpoint files)")
    # the text
    p.add_argument("--text", nargs="+", default=["shakespeare"],
                   help="text to evaluate on: a folder written by prepare.py, or any source "
                        "prepare.py accepts ('shakespeare', 'fineweb-edu', .txt/.jsonl files, "
                        "folders, globs)")
    p.add_argument("--text_split", default="auto",
                   help="val, train or all (auto: val of prepared folders and built-in sources, "
                        "all of files)")
    p.add_argument("--text2", nargs="+", default=None,
                   help="a second text domain (any source --text takes), evaluated beside the "
                        "first for text bpb, noise, segmentation and branch usage")
    p.add_argument("--text2_split", default="auto", help="--text_split for --text2")
    p.add_argument("--max_bytes", type=int, default=300_000,
                   help="use at most this many bytes of each text (0: all)")
    p.add_argument("--text_windows", type=int, default=0,
                   help="text bpb over this many full block_size windows spread evenly over the "
                        "text, as train.py picks its eval_tokens / block_size val windows (0: all, "
                        "from the start)")
    p.add_argument("--fineweb_files", type=int, default=1)
    # the probes
    p.add_argument("--skip", nargs="*", default=[], choices=GROUPS,
                   help="metric groups to leave out")
    p.add_argument("--pairs", type=int, default=200,
                   help="context/continuation pairs for noise and segmentation")
    p.add_argument("--ctx_chars", type=int, default=400,
                   help="context length in characters (about)")
    p.add_argument("--cont_chars", type=int, default=100,
                   help="continuation length in characters (about)")
    p.add_argument("--noise", default=",".join(f"{k}:{v:g}" for k, v in NOISE_DEFAULTS.items()),
                   help="kind:rate,... of " + ", ".join(NOISE_DEFAULTS) + " (or none)")
    p.add_argument("--seg_rates", default="0.25,1",
                   help="rates of non-canonical segmentation, comma-separated")
    p.add_argument("--words", default=None,
                   help="word list or any text file for the character tasks (default: "
                        "<text folder>/task_words.txt when prepare.py wrote one, else words of the "
                        "text)")
    p.add_argument("--task_items", type=int, default=100,
                   help="items per task family (and per word group)")
    p.add_argument("--families", default=",".join(tasks.FAMILIES),
                   help="task families, comma-separated")
    p.add_argument("--probes", nargs="*", default=[],
                   help="multiple-choice JSONL files " + PROBE_FORMAT)
    p.add_argument("--seed", type=int, default=1337)
    # running and reporting
    p.add_argument("--batch_tokens", type=int, default=8192,
                   help="tokens per forward pass (fewer: less memory)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32",
                   help="float32, or bfloat16 (autocast; faster on GPUs, but its rounding can blur "
                        "the small differences this script measures)")
    p.add_argument("--json", default=None,
                   help="write every number and setting to this file (default: each checkpoint's "
                        "numbers to eval.json in its folder, or to <name>.eval.json beside a "
                        "checkpoint file)")
    p.add_argument("--md", default=None, help="also write the markdown table here")
    return p


def options(argv):
    """Parsed and checked command-line options; noise, seg_rates and families come back parsed.
    Also the probe files, read: name -> (path, items)."""
    args = parser().parse_args(argv)
    check_options(args)
    return args, read_probe_files(args.probes)


def check_options(args):
    """Fails on a bad option before any long work; parses noise, seg_rates and families in place."""
    if args.dtype not in ("bfloat16", "float32"):
        raise SystemExit("error: --dtype must be float32 or bfloat16")
    if args.max_bytes < 0 or args.text_windows < 0:
        raise SystemExit("error: --max_bytes and --text_windows must be 0 or more")
    args.noise = parse_noise(args.noise)
    try:
        args.seg_rates = [float(r) for r in args.seg_rates.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"error: --seg_rates {args.seg_rates!r} is not a comma-separated list of "
                         f"numbers")
    if not all(0 <= r <= 1 for r in args.seg_rates):
        raise SystemExit("error: --seg_rates must lie between 0 and 1")
    args.families = [f for f in args.families.split(",") if f]
    bad = [f for f in args.families if f not in tasks.FAMILIES]
    if bad:
        raise SystemExit(f"error: unknown task families {bad}; "
                         f"families: {', '.join(tasks.FAMILIES)}")
    if len(set(args.checkpoints)) < len(args.checkpoints):
        raise SystemExit("error: a checkpoint is named twice")
    for path in args.checkpoints:
        if not os.path.exists(os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path):
            raise SystemExit(f"error: no checkpoint at {path}: pass a training out_dir "
                             f"(holding ckpt.pt) or a file")

# ================================================================================================
# inputs: text sources, context/continuation pairs, task words, probe files

def text_documents(sources, split="auto", max_bytes=300_000, fineweb_files=1):
    """Documents (UTF-8 bytes) of a source prepare.py accepts, or of a folder prepare.py wrote, in
    order, up to max_bytes in all (0: no limit). split: 'val', 'train' or 'all'; 'auto' is 'val' for
    shakespeare, fineweb-edu and prepared folders, 'all' for files (you name the file you want)."""
    src = sources[0]
    prepared = (len(sources) == 1 and os.path.isdir(src)
                and bool(glob.glob(os.path.join(src, "*.bytes.bin"))))
    builtin = len(sources) == 1 and src in ("shakespeare", "fineweb-edu")
    if split == "auto":
        split = "val" if prepared or builtin else "all"
    if split not in ("val", "train", "all"):
        raise SystemExit(f"error: --text_split must be auto, val, train or all, not {split!r}")
    if prepared:
        docs = prepared_documents(src, split, max_bytes)
    else:
        docs = source_documents(sources, split, builtin, fineweb_files)
    out = crop_documents(docs, max_bytes)
    if not out:
        raise SystemExit(f"error: the text source {' '.join(sources)} ({split} split) has no "
                         f"documents")
    return out


def prepared_documents(folder, split, max_bytes):
    """The documents of a folder prepare.py wrote (SPLIT.bytes.bin), from at most max_bytes + 1
    bytes of each split read."""
    parts = ["train", "val"] if split == "all" else [split]
    raw = []
    for part in parts:
        try:
            arr, _ = read_array(os.path.join(folder, f"{part}.bytes.bin"))
        except Exception as e:
            raise SystemExit(f"error: {e}")
        # documents start with 0xFF: split them there
        raw.append(bytes(arr[:max_bytes + 1] if max_bytes else arr))
    # the prefix may end inside a character: keep whole characters only
    return [d.decode("utf-8", "ignore").encode("utf-8")
            for r in raw for d in r.split(bytes([EOT_BYTE])) if d]


def source_documents(sources, split, builtin, fineweb_files):
    """The documents of sources prepare.py reads, one at a time (read only as far as needed)."""
    if split == "all" and not builtin:
        progress = Progress(None)
        return (utf8(d) for f in expand(sources)
                for d in read_documents(f, progress))
    ns = argparse.Namespace(train=sources, val=None, val_fraction=0.05,
                            fineweb_files=fineweb_files)
    _, tagged, _ = tagged_documents(ns)
    return (utf8(d) for s, d in tagged if split == "all" or s == split)


def crop_documents(docs, max_bytes):
    """The documents, in order, up to max_bytes in all (0: no limit); empty ones left out."""
    out, total = [], 0
    for d in docs:
        if max_bytes and total >= max_bytes:
            break
        if max_bytes and total + len(d) > max_bytes:  # crop at a character boundary
            d = d[:max_bytes - total].decode("utf-8", "ignore").encode("utf-8")
        if d:
            out.append(d)
            total += len(d)
    return out


def make_pairs(texts, n, ctx_chars, cont_chars, seed):
    """n (context, continuation) pairs cut from documents at word boundaries, seeded. The context
    starts at a word and ends with one (about ctx_chars characters); the continuation (about
    cont_chars) starts with the whitespace that follows and ends at a word's end."""
    rng = random.Random(f"pairs:{seed}")
    texts = [t for t in texts if len(t) > ctx_chars + cont_chars + 2]
    if not texts:
        raise SystemExit(f"error: no document of the text is longer than --ctx_chars + "
                         f"--cont_chars ({ctx_chars} + {cont_chars}); give more text or shorter "
                         f"lengths")
    word_start, word_end = re.compile(r"\s\S"), re.compile(r"\S\s")
    weights = [len(t) for t in texts]
    pairs, seen = [], set()
    for _ in range(50 * n):
        if len(pairs) == n:
            break
        d = rng.choices(range(len(texts)), weights)[0]
        t = texts[d]
        a = rng.randrange(0, len(t) - ctx_chars - cont_chars)
        if a > 0:
            m = word_start.search(t, a - 1)
            a = m.start() + 1 if m else len(t)
        m = word_end.search(t, a + ctx_chars - 1)
        if not m:
            continue
        b = m.start() + 1
        m = word_end.search(t, b + cont_chars - 1)
        c = m.start() + 1 if m else len(t)
        ctx, cont = t[a:b], t[b:c]
        if (d, a) in seen or not ctx.strip() or not cont.strip():
            continue
        seen.add((d, a))
        pairs.append((ctx, cont))
    if len(pairs) < n:
        print(f"warning: only {len(pairs)} distinct context/continuation pairs of {n}",
              file=sys.stderr)
    return pairs


def domain(sources, split, args, skip, settings, key=""):
    """One text domain: its documents as bytes (each after 0xFF) and its context/continuation pairs,
    loaded only when some group needs them; their sizes go into settings under text<key>_docs and
    so on."""
    need = not {"text", "noise", "segmentation", "branch"} <= skip
    docs = text_documents(sources, split, args.max_bytes, args.fineweb_files) if need else []
    texts = [d.decode("utf-8", "replace") for d in docs]
    pairs = []
    if docs and not {"noise", "segmentation"} <= skip:
        pairs = make_pairs(texts, args.pairs, args.ctx_chars, args.cont_chars, args.seed)
    settings[f"text{key}_docs"], settings[f"text{key}_bytes"] = len(docs), sum(map(len, docs))
    settings["n_pairs" + key] = len(pairs)
    return b"".join(bytes([EOT_BYTE]) + d for d in docs), texts, pairs


def task_words(args, texts):
    """The task word list, the held-out items of each family, and the settings that describe
    them."""
    words_file = args.words
    prepared_list = os.path.join(args.text[0], "task_words.txt")
    if words_file is None and len(args.text) == 1 and os.path.exists(prepared_list):
        words_file = prepared_list  # the list prepare.py made its task documents from
    if not words_file and not texts:
        docs = text_documents(args.text, args.text_split, args.max_bytes, args.fineweb_files)
        texts = [d.decode("utf-8", "replace") for d in docs]
    try:
        words = tasks.load_words(words_file) if words_file else tasks.words_from_text(texts)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: --words: {e}")
    heldout = tasks.split_words(words)[1]
    if not heldout:
        raise SystemExit("error: the word list has no held-out words: give a longer list with "
                         "--words")
    task_items = {f: tasks.eval_items(words, f, args.task_items, args.seed) for f in args.families}
    short = {f: len(v) for f, v in task_items.items() if len(v) < args.task_items}
    if short:
        print(f"warning: too few held-out words for {args.task_items} items: {short}",
              file=sys.stderr)
    info = dict(words_source=words_file or "words of the text (twice or more)",
                n_words=len(words), n_heldout_words=len(heldout),
                heldout_percent=tasks.HELDOUT_PERCENT, heldout_salt=tasks.HELDOUT_SALT,
                n_choices=tasks.N_CHOICES, items={f: len(v) for f, v in task_items.items()},
                groups={})
    return words, task_items, info


def group_items(words, tok, args, info):
    """Task items of each word group (train words; held-out words of one token and of several) for a
    main tokenizer; the group sizes go into info['groups'][tokenizer]."""
    groups = tasks.word_groups(words, tok.encode)
    items = {g: {f: tasks.eval_items(words, f, args.task_items, args.seed, g, groups)
                 for f in args.families}
             for g in TASK_GROUPS}
    info["groups"][tok.spec] = {g: dict(words=len(groups[g]),
                                        items={f: len(v) for f, v in items[g].items()})
                                for g in TASK_GROUPS}
    return items


def _probe_problem(obj):
    """What is wrong with one line of a probe file (None: nothing)."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    missing = [k for k in ("context", "choices", "answer") if k not in obj]
    if missing:
        return f"missing {', '.join(repr(k) for k in missing)}"
    if not isinstance(obj["context"], str):
        return "'context' is not a string"
    ch = obj["choices"]
    if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
        return "'choices' is not a list of at least two strings"
    if not all(ch):
        return "a choice is empty (there is nothing to score)"
    a = obj["answer"]
    if type(a) is not int or not 0 <= a < len(ch):
        return f"'answer' must be an integer index into 'choices' (0..{len(ch) - 1}), got {a!r}"
    return None


def read_probes(path):
    """A multiple-choice probe file: one JSON object per line (blank lines skipped)."""
    if not os.path.exists(path):
        raise SystemExit(f"error: probe file {path} not found")
    items = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SystemExit(f"error: {path} line {n}: not UTF-8 (byte {e.start} of the line)")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SystemExit(f"error: {path} line {n}: not valid JSON ({e}); "
                                 f"expected {PROBE_FORMAT}")
            problem = _probe_problem(obj)
            if problem:
                raise SystemExit(f"error: {path} line {n}: {problem}; expected {PROBE_FORMAT}")
            items.append(obj)
    if not items:
        raise SystemExit(f"error: probe file {path} holds no probes; expected lines {PROBE_FORMAT}")
    return items


def read_probe_files(paths):
    """name (the file name up to its first dot, primed where taken) -> (path, items)."""
    files = {}
    for path in paths:
        name = os.path.basename(path).split(".")[0]
        while name in files:
            name += "'"
        files[name] = (path, read_probes(path))
    return files


@dataclass
class Inputs:
    """What every checkpoint is scored on."""
    data: bytes  # the text: documents, each after 0xFF (b"": not needed)
    pairs: list  # its (context, continuation) pairs
    data2: bytes  # the same of the second domain, --text2
    pairs2: list
    words: list  # the task word list (None: no tasks)
    task_items: dict  # family -> held-out items
    probe_files: dict  # name -> (path, items)
    groups: dict = field(default_factory=dict)  # main tokenizer -> word group -> family -> items


def shared_inputs(args, probe_files, settings):
    """The inputs of every checkpoint, loaded once; their sizes go into settings."""
    skip = set(args.skip)
    data, texts, pairs = domain(args.text, args.text_split, args, skip, settings)
    data2, pairs2 = b"", []
    if args.text2:
        data2, _, pairs2 = domain(args.text2, args.text2_split, args, skip, settings, "2")
    words, task_items = None, {}
    if not {"tasks", "task_groups"} <= skip:
        words, task_items, settings["tasks"] = task_words(args, texts)
    return Inputs(data, pairs, data2, pairs2, words, task_items, probe_files)

# ================================================================================================
# running a model

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

# ================================================================================================
# probes: text bpb

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
# probes: noise and segmentation (a continuation's bpb after a changed context)

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
# probes: character tasks and multiple-choice files

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


def probes(scorer, files):
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
# probes: branch usage (what each side stream's cross-attention adds, and what zeroing it costs)

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

# ================================================================================================
# the report: a markdown table (a row per metric, a column per checkpoint) and JSON files

def fmt(v, f="{:.4f}"):
    """A number as a table cell; empty where a checkpoint has none ({} or None)."""
    return "" if v == {} or v is None else f.format(v)


class Table:
    """A markdown table under construction: a row per metric, a column per checkpoint."""

    def __init__(self, results):
        self.results, self.names, self.rows = results, list(results), []

    def get(self, name, *keys):
        """results[name][key][key]...; {} where a key is missing."""
        return functools.reduce(lambda d, k: d.get(k, {}) if isinstance(d, dict) else {}, keys,
                                self.results[name])

    def has(self, *keys):
        """Whether some checkpoint has a value at keys."""
        return any(self.get(n, *keys) != {} for n in self.names)

    def first(self, key):
        """The results of the first checkpoint that has (non-empty) results[key], or None."""
        return next((self.results[n] for n in self.names if self.results[n].get(key)), None)

    def row(self, label, cell):
        """A row: the label, then cell(name) of each checkpoint."""
        self.rows.append([label] + [cell(n) for n in self.names])

    def markdown(self):
        lines = ["| metric | " + " | ".join(self.names) + " |", "|---|" + "---|" * len(self.names)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def markdown_table(results):
    """results: checkpoint -> its results. The table: the models, the text (and --text2), the
    character tasks, branch usage, the probe files."""
    t = Table(results)
    info_rows(t)
    for d in ("", "2"):  # the text, then the second domain (--text2)
        text_rows(t, d)
    task_rows(t)
    branch_rows(t)
    probe_rows(t)
    return t.markdown()


def info_rows(t):
    t.row("step", lambda n: fmt(t.get(n, "info", "step"), "{}"))
    params = lambda n: t.get(n, "info", "params")
    t.row("parameters", lambda n: fmt(params(n) / 1e6, "{:.2f}M") if params(n) != {} else "")
    t.row("side streams", lambda n: ", ".join(t.get(n, "info", "streams")) or "none")


def text_rows(t, d):
    """Text bpb, noise and segmentation of one domain (d: '' the text, '2' the second domain)."""
    text = "text" + d
    if t.has(text):
        t.row(f"{text} bpb", lambda n: fmt(t.get(n, text, "bpb")))
    for group, items, reference, what in (("noise", "kinds", "clean_bpb", "clean context"),
                                          ("segmentation", "rates", "canonical_bpb", "canonical")):
        g = group + d
        first = t.first(g)
        if not first:
            continue
        t.row(f"{text} {group}: {what}, continuation bpb", lambda n: fmt(t.get(n, g, reference)))
        for key, v in first[g][items].items():
            label = f"{key} {v['rate']:g}" if group == "noise" else f"rate {v['rate']:g}"
            t.row(f"{text} {group}: {label}, bpb (Δ)",
                  lambda n: f"{t.get(n, g, items, key, 'bpb'):.4f} "
                            f"({t.get(n, g, items, key, 'delta'):+.4f})")


def task_rows(t):
    """Each task family on held-out words and their mean; the means on each word group."""
    first = t.first("tasks")
    for fam, v in first["tasks"].items() if first else ():
        label = "tasks: mean" if fam == "mean" else f"task: {fam}"
        t.row(f"{label}, acc / exact (chance {v['chance']:.2f})",
              lambda n: f"{t.get(n, 'tasks', fam, 'acc'):.3f} / "
                        f"{t.get(n, 'tasks', fam, 'exact'):.3f}")
    for group, label in TASK_GROUPS.items():
        if not t.has("task_groups", group, "mean"):
            continue
        mean = lambda n: t.get(n, "task_groups", group, "mean")
        t.row(f"tasks on {label}: mean acc / exact (chance) [items]",
              lambda n: "" if mean(n) == {} else
              "{acc:.3f} / {exact:.3f} ({chance:.2f}) [{n}]".format(**mean(n)))


def branch_rows(t):
    """Per side stream: what zeroing it costs, and the norm share it adds by layer."""
    streams = list(dict.fromkeys(s for n in t.names for s in t.get(n, "branch", "streams")))
    for s in streams:
        for key, label in (("text_bpb", "text bpb"), ("text2_bpb", "text2 bpb"),
                           ("task_acc", "task acc")):
            if t.has("branch", "streams", s, "delta", key):
                t.row(f"branch {s} zeroed: Δ {label}",
                      lambda n: fmt(t.get(n, "branch", "streams", s, "delta", key), "{:+.4f}"))
        shares = lambda n: t.get(n, "branch", "streams", s, "norm_share").items()
        t.row(f"branch {s}: cross-attention norm / residual norm, by layer",
              lambda n: ", ".join(f"L{layer} {v:.2%}" for layer, v in shares(n)))


def probe_rows(t):
    first = t.first("probes")
    for name, v in first["probes"].items() if first else ():
        t.row(f"probe: {name}, acc / acc_norm (chance {v['chance']:.2f})",
              lambda n: f"{t.get(n, 'probes', name, 'acc'):.3f} / "
                        f"{t.get(n, 'probes', name, 'acc_norm'):.3f}")


def default_json(path):
    """Where a checkpoint's numbers go without --json: beside it, never into the working
    directory."""
    if os.path.isdir(path):
        return os.path.join(path, "eval.json")
    return os.path.splitext(path)[0] + ".eval.json"


def write_file(path, text):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text)  # a reader never sees half a file


def report(args, settings, results):
    """Prints the markdown table; writes the JSON of every checkpoint to --json (without it, each
    checkpoint's file was written as it was done) and the table to --md."""
    table = markdown_table(results)
    print(table)
    out = {"settings": settings, "checkpoints": results}
    written = [args.json] if args.json else [default_json(path) for path in results]
    if args.json:
        write_file(args.json, json.dumps(out, indent=1))
    if args.md:
        write_file(args.md, table + "\n")
        written.append(args.md)
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return out

# ================================================================================================
# the script: the shared inputs, then each checkpoint through every probe, then the report

def main(argv=None):
    args, probe_files = options(argv)
    device = pick_device(args.device)
    autocast = autocast_for(device, args.dtype)
    settings = dict(vars(args), device=device, torch=torch.__version__)
    inputs = shared_inputs(args, probe_files, settings)
    toks, results = {}, {}
    for path in args.checkpoints:
        results[path] = evaluate_checkpoint(path, args, inputs, settings, device, autocast, toks)
        checkpoint_done(path, results, args, settings)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the checkpoint's model is gone: give its memory back
    return report(args, settings, results)


def autocast_for(device, dtype):
    """bfloat16: autocast on the device; float32: nothing."""
    if dtype != "bfloat16":
        return nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else device, dtype=torch.bfloat16)


def evaluate_checkpoint(path, args, inputs, settings, device, autocast, toks):
    """One checkpoint through every probe --skip leaves in: its results, under 'info' what the model
    is (and how long it took)."""
    t0 = time.time()
    model, main_tok, side_toks, ckpt = open_trained(path, device, toks)
    model.attention = "sdpa"  # dense masks handle any length; evaluation windows are short
    scorer = Scorer(model, main_tok, side_toks, device, args.batch_tokens, autocast, name=path)
    info = model_info(path, model, ckpt)
    res = {"info": info}
    print(f"[{path}] step {info['step']}, {info['params'] / 1e6:.2f}M parameters, "
          f"tokenizer {info['tokenizer']}, streams {info['streams'] or 'none'}", file=sys.stderr)
    if "task_groups" not in args.skip and info["tokenizer"] not in inputs.groups:
        inputs.groups[info["tokenizer"]] = group_items(inputs.words, main_tok, args,
                                                       settings["tasks"])
    for name, run in stages(scorer, args, inputs):
        if name.rstrip("2") in args.skip:  # a group left out in both domains
            continue
        t1 = time.time()
        try:
            value = run()
        except ValueError as e:
            raise SystemExit(f"error: {path}, {name}: {e}")
        if value is not None:
            res[name] = value
            print(f"[{path}] {name} done in {duration(time.time() - t1)}", file=sys.stderr)
    info["lost_tokens"] = scorer.lost.tolist()
    info["seconds"] = time.time() - t0
    return res


def model_info(path, model, ckpt):
    c = model.config
    return dict(path=path, step=ckpt.get("step"), best_val_loss=ckpt.get("best_val_loss"),
                tokenizer=c.tokenizer, block_size=c.block_size,
                streams=[s.tokenizer for s in c.streams],
                params=sum(p.numel() for p in model.parameters()))


def stages(scorer, args, inputs):
    """(name, run) of every probe in the order they run; run() returns None where there is nothing
    to score (no second domain, no probe files)."""
    x, windows, seed = inputs, args.text_windows, args.seed
    groups = x.groups.get(scorer.model.config.tokenizer)
    return [
        ("text", lambda: text_bpb(scorer, x.data, windows)),
        ("noise", lambda: noise_robustness(scorer, x.pairs, args.noise, seed)),
        ("segmentation", lambda: segmentation_robustness(scorer, x.pairs, args.seg_rates, seed)),
        ("text2", lambda: text_bpb(scorer, x.data2, windows) if x.data2 else None),
        ("noise2",
         lambda: noise_robustness(scorer, x.pairs2, args.noise, seed) if x.pairs2 else None),
        ("segmentation2", lambda: segmentation_robustness(scorer, x.pairs2, args.seg_rates, seed)
         if x.pairs2 else None),
        ("tasks", lambda: char_tasks(scorer, x.task_items)),
        ("task_groups", lambda: {g: char_tasks(scorer, its, g) for g, its in groups.items()}),
        ("branch", lambda: branch_usage(scorer, x.data, x.data2, x.task_items, windows)),
        ("probes", lambda: probes(scorer, x.probe_files) if x.probe_files else None)]


def checkpoint_done(path, results, args, settings):
    """The time it took (and an estimate for the rest); without --json, its numbers beside it."""
    res = results[path]
    seconds, left = res["info"]["seconds"], len(args.checkpoints) - len(results)
    more = ""
    if left:
        more = f"; {left} more checkpoint(s), about {duration(left * seconds)} if as large"
    print(f"[{path}] done in {duration(seconds)}" + more, file=sys.stderr)
    if not args.json:
        one = {"settings": settings, "checkpoints": {path: res}}
        write_file(default_json(path), json.dumps(one, indent=1))


if __name__ == "__main__":
    main()
