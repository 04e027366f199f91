"""
What evaluate.py scores every checkpoint on, loaded once: the text (a folder prepare.py wrote, or
any source it reads), context/continuation pairs cut from it, the character-task word list and its
items, and multiple-choice probe files.
"""
import argparse
import glob
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field

from data import read_array, utf8
from lab import tasks
from sources import Progress, expand, read_documents, tagged_documents
from tokenizers import EOT_BYTE

TASK_GROUPS = {"train": "train words", "heldout_single_token": "held-out single-token words",
               "heldout_multi_token": "held-out multi-token words"}
PROBE_FORMAT = '{"context": str, "choices": [str, ...], "answer": int}'


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
    so on. The pairs: as many as noise and segmentation (--pairs) or the attack (--attack_pairs)
    need, each group taking the first (a seed gives the same pairs in the same order for any n)."""
    need = not {"text", "noise", "segmentation", "branch", "attack"} <= skip
    docs = text_documents(sources, split, args.max_bytes, args.fineweb_files) if need else []
    texts = [d.decode("utf-8", "replace") for d in docs]
    n_noise = 0 if {"noise", "segmentation"} <= skip else args.pairs
    n_attack = 0 if "attack" in skip else args.attack_pairs
    pairs = []
    if docs and max(n_noise, n_attack):
        pairs = make_pairs(texts, max(n_noise, n_attack), args.ctx_chars, args.cont_chars,
                           args.seed)
    settings[f"text{key}_docs"], settings[f"text{key}_bytes"] = len(docs), sum(map(len, docs))
    settings["n_pairs" + key] = len(pairs[:n_noise])
    if n_attack:
        settings["n_attack_pairs" + key] = len(pairs[:n_attack])
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


def shared_inputs(args, probe_files, settings, skip):
    """The inputs of every checkpoint, loaded once (skip: the groups that will not run); their sizes
    go into settings."""
    data, texts, pairs = domain(args.text, args.text_split, args, skip, settings)
    data2, pairs2 = b"", []
    if args.text2:
        data2, _, pairs2 = domain(args.text2, args.text2_split, args, skip, settings, "2")
    words, task_items = None, {}
    if not {"tasks", "task_groups", "attack"} <= skip:
        words, task_items, settings["tasks"] = task_words(args, texts)
    return Inputs(data, pairs, data2, pairs2, words, task_items, probe_files)
