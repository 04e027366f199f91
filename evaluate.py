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
  tasks     character tasks over held-out words (lab/tasks.py): accuracy against distractors, exact
            match
  task_groups  the same over train words, held-out single-token and held-out multi-token words
  branch    per side stream: bpb and task accuracy with its cross-attention zeroed, and the norm it
            adds
  probes    multiple-choice JSONL files: accuracy by summed and by per-byte log-likelihood
  attack    (only with --attack_k) k character edits found by a seeded greedy search at a fixed
            budget of model queries: the continuation bpb they add (against k random edits) and the
            share of right task and probe answers they turn wrong; with several checkpoints, each
            under the edits found against the others (transfer)
Prints one markdown table (a column per checkpoint) and writes every number, with the settings that
reproduce it, to JSON beside each checkpoint (or --json). Every scored text is a new document: it
starts with the end-of-text token.
"""
import argparse
import functools
import json
import os
import sys
import time
from contextlib import nullcontext

import torch

from checkpoint import open_trained
from data import write_atomic
from lab import attack, tasks
from lab.inputs import PROBE_FORMAT, TASK_GROUPS, group_items, read_probe_files, shared_inputs
from lab.probes import (branch_usage, char_tasks, multiple_choice, noise_robustness,
                        segmentation_robustness, text_bpb)
from lab.scorer import Scorer, duration
from perturb import NOISE_DEFAULTS, parse_noise
from runtime import pick_device

# The file reads top to bottom: the command line; the report (markdown table and JSON); last, main:
# the shared inputs (lab/inputs.py), then each checkpoint through every probe (lab/probes.py), then
# the report.

# the metric groups --skip can leave out, in the order they run
# (attack: only with --attack_k, it is expensive)
GROUPS = ("text", "noise", "segmentation", "tasks", "task_groups", "branch", "probes", "attack")

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
    p.add_argument("--attack_k", default="",
                   help="the attack group: numbers of character edits, comma-separated (e.g. "
                        "1,2,4,8); without it the group does not run")
    p.add_argument("--attack_pairs", type=int, default=100,
                   help="attack: context/continuation pairs of each domain (the first of the "
                        "noise probe's)")
    p.add_argument("--attack_items", type=int, default=20,
                   help="attack: multiple-choice items of each task family and probe file")
    p.add_argument("--attack_queries", type=int, default=256,
                   help="attack: contexts the search scores per pair or item (candidates per "
                        "edit: this over the largest k; the clean context and the random control "
                        "add 1 + one per k)")
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


def left_out(args):
    """The groups not to run: those of --skip, and the attack (expensive) unless --attack_k asks
    for it."""
    return set(args.skip) | (set() if args.attack_k else {"attack"})


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
    try:
        args.attack_k = sorted({int(k) for k in args.attack_k.split(",") if k.strip()})
    except ValueError:
        raise SystemExit(f"error: --attack_k {args.attack_k!r} is not a comma-separated list of "
                         f"integers")
    if min(args.attack_k + [args.attack_pairs, args.attack_items]) < 1:
        raise SystemExit("error: --attack_k, --attack_pairs and --attack_items must be 1 or more")
    if args.attack_queries < max(args.attack_k, default=1):
        raise SystemExit("error: --attack_queries must be at least the largest --attack_k (one "
                         "candidate per edit)")
    if len(set(args.checkpoints)) < len(args.checkpoints):
        raise SystemExit("error: a checkpoint is named twice")
    for path in args.checkpoints:
        if not os.path.exists(os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path):
            raise SystemExit(f"error: no checkpoint at {path}: pass a training out_dir "
                             f"(holding ckpt.pt) or a file")

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
    for d in ("", "2"):
        attack_rows(t, d)
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


def attack_rows(t, d):
    """Per target and k: what the edits found against a checkpoint cost it (against as many random
    edits); with several checkpoints, what the edits found against each cost every one (transfer;
    a checkpoint's own edits: the attack itself)."""
    g = "attack" + d
    first = t.first(g)
    if not first:
        return
    targets = [(f"text{d} continuation", ("continuation",), "delta"),
               ("tasks", ("tasks", "mean"), "turned_wrong")]
    targets += [(f"probe {p}", ("probes", p), "turned_wrong") for p in first[g].get("probes", {})]
    for label, path, key in targets:
        node = attack.at_path(first[g], path)
        what = (f"Δ bpb, greedy / random (share Δ > {attack.THRESHOLD:g})" if key == "delta" else
                "right answers turned wrong, greedy / random")
        f = "{:+.4f}" if key == "delta" else "{:.3f}"
        for k in node["k"] if node else ():
            v = lambda n: t.get(n, g, *path, "k", k)
            share = lambda n: f" ({v(n)['share_over']:.2f})" if key == "delta" else ""
            t.row(f"attack {label} k={k}: {what}",
                  lambda n: "" if v(n).get(key) is None else
                  f.format(v(n)[key]) + " / " + f.format(v(n)["random_" + key]) + share(n))
            for source in t.names if len(t.names) > 1 else ():
                under = lambda n: ("transfer", source) if n != source else ()
                t.row(f"attack {label} k={k}: the same under the edits found against {source}",
                      lambda n: fmt(t.get(n, g, *path, *under(n), "k", k, key), f))


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
    inputs = shared_inputs(args, probe_files, settings, left_out(args))
    toks, results = {}, {}
    for path in args.checkpoints:
        results[path] = evaluate_checkpoint(path, args, inputs, settings, device, autocast, toks)
        checkpoint_done(path, results, args, settings)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the checkpoint's model is gone: give its memory back
    if "attack" not in left_out(args) and len(args.checkpoints) > 1:
        transfer_attacks(args, inputs, settings, results, device, autocast, toks)
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
    scorer, ckpt = open_scorer(path, args, device, autocast, toks)
    model, main_tok = scorer.model, scorer.main_tok
    info = model_info(path, model, ckpt)
    res = {"info": info}
    print(f"[{path}] step {info['step']}, {info['params'] / 1e6:.2f}M parameters, "
          f"tokenizer {info['tokenizer']}, streams {info['streams'] or 'none'}", file=sys.stderr)
    if "task_groups" not in args.skip and info["tokenizer"] not in inputs.groups:
        inputs.groups[info["tokenizer"]] = group_items(inputs.words, main_tok, args,
                                                       settings["tasks"])
    for name, run in stages(scorer, args, inputs):
        if name.rstrip("2") in left_out(args):  # a group left out in both domains
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


def open_scorer(path, args, device, autocast, toks):
    model, main_tok, side_toks, ckpt = open_trained(path, device, toks)
    model.attention = "sdpa"  # dense masks handle any length; evaluation windows are short
    return Scorer(model, main_tok, side_toks, device, args.batch_tokens, autocast, name=path), ckpt


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
    # the domains' pairs: the noise probe's first, the attack's a prefix of the same sequence
    pairs, pairs2 = x.pairs[:args.pairs], x.pairs2[:args.pairs]
    attacks = functools.partial(attack.attack_probe, scorer, ks=args.attack_k,
                                queries=args.attack_queries, seed=seed, n_items=args.attack_items)
    return [
        ("text", lambda: text_bpb(scorer, x.data, windows)),
        ("noise", lambda: noise_robustness(scorer, pairs, args.noise, seed)),
        ("segmentation", lambda: segmentation_robustness(scorer, pairs, args.seg_rates, seed)),
        ("text2", lambda: text_bpb(scorer, x.data2, windows) if x.data2 else None),
        ("noise2",
         lambda: noise_robustness(scorer, pairs2, args.noise, seed) if pairs2 else None),
        ("segmentation2", lambda: segmentation_robustness(scorer, pairs2, args.seg_rates, seed)
         if pairs2 else None),
        ("tasks", lambda: char_tasks(scorer, x.task_items)),
        ("task_groups", lambda: {g: char_tasks(scorer, its, g) for g, its in groups.items()}),
        ("branch", lambda: branch_usage(scorer, x.data, x.data2, x.task_items, windows)),
        ("probes", lambda: multiple_choice(scorer, x.probe_files) if x.probe_files else None),
        ("attack", lambda: attacks(x.pairs[:args.attack_pairs], x.task_items, x.probe_files)),
        ("attack2",
         lambda: attacks(x.pairs2[:args.attack_pairs], None, None) if x.pairs2 else None)]


def transfer_attacks(args, inputs, settings, results, device, autocast, toks):
    """Each checkpoint, loaded again, under the edits the attack found against each other one."""
    x = inputs
    for path in args.checkpoints:
        t0 = time.time()
        scorer, _ = open_scorer(path, args, device, autocast, toks)
        for g, pairs, items, files in (("attack", x.pairs, x.task_items, x.probe_files),
                                       ("attack2", x.pairs2, None, None)):
            for source in args.checkpoints:
                if source != path and g in results[path] and g in results[source]:
                    attack.transfer(scorer, pairs[:args.attack_pairs], items, files,
                                    args.attack_items, results[path][g], results[source][g],
                                    source)
        print(f"[{path}] attack transfer done in {duration(time.time() - t0)}", file=sys.stderr)
        if not args.json:
            save_beside(path, results[path], settings)


def checkpoint_done(path, results, args, settings):
    """The time it took (and an estimate for the rest); without --json, its numbers beside it."""
    res = results[path]
    seconds, left = res["info"]["seconds"], len(args.checkpoints) - len(results)
    more = ""
    if left:
        more = f"; {left} more checkpoint(s), about {duration(left * seconds)} if as large"
    print(f"[{path}] done in {duration(seconds)}" + more, file=sys.stderr)
    if not args.json:
        save_beside(path, res, settings)


def save_beside(path, res, settings):
    one = {"settings": settings, "checkpoints": {path: res}}
    write_file(default_json(path), json.dumps(one, indent=1))


if __name__ == "__main__":
    main()
