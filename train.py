"""
Train a bytecross model (or its plain-GPT baseline: streams=[]).

    python train.py config/cpu_demo.py                         # CPU, a few minutes
    python train.py config/gpt2_bytes.py --max_iters=2000      # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2_bytes.py   # DDP (add --nnodes etc. for multi-node)

Config files are Python files that assign options; --key=value overrides them. Unknown keys are errors.
Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits with status 128 + the signal's
number (130, 143): the run did not finish. --init_from=resume continues exactly where it stopped (weights,
optimizer, each process's RNG, data position, step); --init_from=auto resumes when out_dir has a checkpoint.
"""
import ast
import difflib
import fcntl
import json
import math
import os
import signal
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from data import Corpus, DataError, budgets, collate, data_digest, make_batch, resegmented_window
from model import GPT, GPTConfig, batch_inputs, pick_device
from tokenizers import Tokenizer

DEFAULTS = dict(
    # data and output
    data_dir="data/shakespeare",   # made by prepare.py
    out_dir="out",
    init_from="scratch",           # 'scratch', 'resume' (from out_dir/ckpt.pt), 'auto' (resume if it exists)
    # model (see model.py); the default is GPT-2 with a byte branch read by main layer 0
    tokenizer="gpt2",
    block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    streams=[dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=256, window=256, budget=6144,
                  packed_budget=4096, cross_layers=[0], locality=None)],
    # optimization
    batch_size=16,                 # windows per micro-step per process
    total_batch_size=16 * 1024,    # tokens per optimizer step, over all processes and micro-steps
    max_iters=5000,
    learning_rate=6e-4, min_lr=6e-5, warmup_iters=200,   # linear warmup, then cosine decay to min_lr
    weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,   # grad_clip 0: no clipping
    # making tokens need their bytes (README, Findings); both act in training only
    resegment=0.0,                 # share of multi-byte tokens cut in two (same bytes, other token ids)
    embed_dropout=0.0,             # probability that a token's embedding is zeroed (its identity: bytes only)
    embed_dropout_anneal=0.0,      # >0: embed_dropout decays linearly to 0 over this fraction of max_iters
    # evaluation, logging, checkpoints
    eval_interval=250, eval_tokens=2**18, log_interval=10, ckpt_interval=0,  # 0: checkpoint at each eval
    # system
    device="auto",                 # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",                  # 'auto' (bf16 on capable GPUs, else float32), 'bfloat16', 'float32'
    compile="auto",                # torch.compile: 'auto' is on for CUDA
    attention="auto",              # 'flex' (fused, GPU) or 'sdpa' (reference); 'auto': flex on CUDA
    seed=1337,
)
MODEL_KEYS = ("tokenizer", "block_size", "n_layer", "n_head", "n_embd", "dropout", "streams")
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16, by device name


def parse_config(argv):
    """Config files (Python assignments) then --key=value overrides, checked against DEFAULTS.
    Returns the config and the set of keys given explicitly."""
    cfg, given = dict(DEFAULTS), set()
    accepts = {bool: lambda v: isinstance(v, bool),
               int: lambda v: type(v) is int or type(v) is float and v.is_integer(),
               float: lambda v: type(v) in (int, float),
               str: lambda v: isinstance(v, str),
               list: lambda v: isinstance(v, (list, tuple))}
    kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string", list: "a list"}

    def set_key(key, value, where):
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            raise SystemExit(f"error: unknown config key {key!r} ({where})"
                             + (f"; did you mean {close[0]}?" if close else "") + " Valid keys:\n  "
                             + ", ".join(sorted(DEFAULTS)))
        kind = type(DEFAULTS[key])
        if DEFAULTS[key] == "auto" and isinstance(value, bool):
            kind = bool  # 'auto' options also take True/False
        if not accepts[kind](value):
            raise SystemExit(f"error: {key}={value!r} ({where}): must be {kinds[kind]}")
        cfg[key] = kind(value) if kind in (int, float) else list(value) if kind is list else value
        given.add(key)

    for arg in argv:
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            if not eq:
                raise SystemExit(f"error: expected --key=value, got {arg!r}")
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw  # a bare string
            if isinstance(DEFAULTS.get(key), str) and not isinstance(value, bool):
                value = raw  # a name or path, even one that looks like a number
            set_key(key, value, "command line")
        else:
            for key, value in read_config_file(arg).items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    set_key(key, value, arg)
    return cfg, given


def plain(value):
    """Numbers, strings, bools, None, and lists and dicts of them: what a checkpoint may hold"""
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return value is None or type(value) in (bool, int, float, str)


def validate(cfg):
    """Stop, with one line per bad value, on options that would crash late or quietly spoil a run."""
    rules = {key: (lambda v: v >= 1, "an integer >= 1") for key in (
        "batch_size", "block_size", "total_batch_size", "eval_interval", "eval_tokens", "log_interval",
        "n_layer", "n_head", "n_embd")}
    rules.update({key: (lambda v: v >= 0, "an integer >= 0") for key in ("max_iters", "warmup_iters",
                                                                         "ckpt_interval", "seed")})
    rules.update({key: (lambda v: v >= 0, ">= 0") for key in ("learning_rate", "min_lr", "weight_decay")})
    rules.update({key: (lambda v: 0 <= v < 1, "in [0, 1)") for key in ("dropout", "beta1", "beta2", "resegment",
                                                                         "embed_dropout")})
    rules["embed_dropout_anneal"] = (lambda v: 0 <= v <= 1, "in [0, 1] (0: constant)")
    rules.update({key: (lambda v: isinstance(v, str) and v != "", "a non-empty string") for key in (
        "data_dir", "out_dir", "tokenizer")})
    rules.update({
        "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
        "dtype": (lambda v: v in ("auto", "bfloat16", "float32"), "'auto', 'bfloat16' or 'float32' (float16 "
                  "would need loss scaling, which train.py does not do)"),
        "compile": (lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        "attention": (lambda v: v in ("auto", "flex", "sdpa"), "'auto', 'flex' or 'sdpa'"),
        "device": (lambda v: v == "auto" or isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda", "mps"),
                   "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        "streams": (lambda v: all(isinstance(s, dict) for s in v), "a list of dicts (model.StreamConfig)"),
    })
    errors = [f"error: {key}={cfg[key]!r}: must be {what}"
              for key, (ok, what) in rules.items() if not ok(cfg[key])]
    errors += [f"error: {key}={value!r}: must be plain data (numbers, strings, lists, dicts)"
               for key, value in cfg.items() if not plain(value)]
    width, heads = cfg["n_embd"], cfg["n_head"]
    if width >= 1 and heads >= 1 and (width % heads or width // heads % 2):  # rotary needs even head sizes
        errors.append(f"error: n_embd={cfg['n_embd']}, n_head={cfg['n_head']}: n_embd must split into n_head "
                      f"heads of even size")
    if errors:
        raise SystemExit("\n".join(errors))


def check_dtype(dtype, device_type):
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("error: dtype=bfloat16: this GPU has no bfloat16; use --dtype=float32")


def read_config_file(path):
    """The variables a Python config file assigns; its errors name the file and line."""
    try:
        with open(path) as f:
            code = compile(f.read(), path, "exec")
    except FileNotFoundError:
        raise SystemExit(f"error: config file {path} not found") from None
    except OSError as e:
        raise SystemExit(f"error: config file {path}: {e.strerror.lower()}") from None
    except SyntaxError as e:
        raise SystemExit(f"error: {path} line {e.lineno}: {e.msg}") from None
    scope = {}
    try:
        exec(code, scope)
    except Exception as e:
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path][-1]
        raise SystemExit(f"error: {path} line {line}: {type(e).__name__}: {e}") from None
    return scope


_lock = None  # this process's lock on its out_dir


def lock_out_dir(out_dir):
    """Hold out_dir/train.lock while the run lives (the OS drops it when the process ends, however it ends):
    a second run into the same out_dir stops at once instead of overwriting the first one's files."""
    global _lock
    unlock_out_dir()  # held by a run that this process started earlier (tests call main() repeatedly)
    os.makedirs(out_dir, exist_ok=True)
    _lock = open(os.path.join(out_dir, "train.lock"), "a+")
    try:
        fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _lock.seek(0)
        pid = _lock.read().strip() or "?"
        raise SystemExit(f"error: another training run (pid {pid}) is using {out_dir}: wait for it to end, "
                         f"or pick another --out_dir") from None
    _lock.truncate(0)
    _lock.write(f"{os.getpid()}\n")
    _lock.flush()


def unlock_out_dir():
    global _lock
    if _lock is not None:
        _lock.close()
        _lock = None


def start_log(path, resumed_at, changes, evaluates_again=True):
    """A new log.jsonl; on resume, the log cut back to the checkpoint's step (the steps after it run again,
    and would otherwise appear twice), then a record of the resume and of any options that changed.
    evaluates_again: the resumed run evaluates at its first step, so the evaluation logged there goes."""
    keep = []
    if resumed_at is not None and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if r.get("step", 0) < resumed_at or r.get("step") == resumed_at and not (
                        evaluates_again and "val_loss" in r):
                    keep.append(line)
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
        if resumed_at is not None:
            f.write(json.dumps({"step": resumed_at, "resumed": True, "changed": changes}) + "\n")
    os.replace(path + ".tmp", path)


def read_checkpoint(path):
    """A checkpoint's contents: tensors and plain data only, so loading a file never runs code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["config"], ckpt["model"], ckpt["optimizer"]
    except Exception as e:
        if "Unsupported global" in str(e):  # weights_only met a class or function: loading it could run code
            raise SystemExit(f"error: {path} holds objects other than tensors and plain data ("
                             f"{str(e).split('GLOBAL ')[-1].split()[0]}); refused, as loading them could run "
                             f"code") from None
        raise SystemExit(f"error: {path} is not a readable checkpoint ({type(e).__name__}: {e}); "
                         f"start afresh in another out_dir") from None
    return ckpt


def open_run(cfg, given, master):
    """Settle init_from, and on resume read the checkpoint: its config, with what is given explicitly on
    top. Returns (config, checkpoint or None, {option: [checkpoint's, now]} for what changed)."""
    if cfg["init_from"] not in ("scratch", "resume", "auto"):
        raise SystemExit(f"error: init_from={cfg['init_from']!r}: must be 'scratch', 'resume' or 'auto'")
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    resume = cfg["init_from"] == "resume" or cfg["init_from"] == "auto" and os.path.exists(ckpt_path)
    if resume and not os.path.exists(ckpt_path):
        raise SystemExit(f"error: --init_from=resume but {ckpt_path} does not exist")
    if not resume:
        if os.path.exists(ckpt_path):
            raise SystemExit(f"error: {ckpt_path} exists. Continue it with --init_from=resume, or pick "
                             f"another --out_dir (or delete it) to start afresh")
        return dict(cfg, init_from="scratch"), None, {}
    ckpt = read_checkpoint(ckpt_path)
    diff = [k for k in MODEL_KEYS if k in given and cfg[k] != ckpt["config"].get(k)]
    if diff:
        raise SystemExit(f"error: the checkpoint in {cfg['out_dir']} has a different architecture ("
                         + "; ".join(f"{k}: {ckpt['config'].get(k)!r} there, {cfg[k]!r} here" for k in diff)
                         + "): resume with its config, or train into another out_dir")
    changed = {k: [ckpt["config"].get(k), cfg[k]] for k in sorted(given)
               if k not in ("init_from", "out_dir") and cfg[k] != ckpt["config"].get(k)}
    cfg = {**DEFAULTS, **ckpt["config"], **{k: cfg[k] for k in given},  # DEFAULTS: options added since
           "init_from": "resume", "out_dir": cfg["out_dir"]}
    if ckpt.get("data") not in (None, data_digest(cfg["data_dir"])):
        changed["data"] = ["the data the checkpoint was trained on", f"other data in {cfg['data_dir']}"]
    if master and changed:
        print("warning: resuming with options that differ from the checkpoint's (which are used otherwise):\n"
              + "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()), flush=True)
    return cfg, ckpt, changed


def model_setup(cfg):
    """The tokenizers and the model config that a train config describes (clear errors for bad values)."""
    main_tok = Tokenizer(cfg["tokenizer"])
    side_toks = [Tokenizer(s.get("tokenizer", "bytes")) for s in cfg["streams"]]
    streams = [dict(s, vocab_size=t.vocab_size) for s, t in zip(cfg["streams"], side_toks)]
    try:
        model_config = GPTConfig(tokenizer=cfg["tokenizer"], vocab_size=main_tok.vocab_size,
                                 **{k: cfg[k] for k in MODEL_KEYS if k not in ("tokenizer", "streams")},
                                 streams=streams)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: bad model config: {e}")
    return main_tok, side_toks, model_config


def runtime(cfg):
    """(device, device type, dtype, compile, attention), each 'auto' settled for this machine."""
    device = pick_device(cfg["device"])
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = cfg["dtype"]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    use_compile = cfg["compile"] if cfg["compile"] != "auto" else device_type == "cuda"
    attention = cfg["attention"] if cfg["attention"] != "auto" else ("flex" if device_type == "cuda" else "sdpa")
    return device, device_type, dtype, use_compile, attention


def check_attention(model_config, attention):
    head_dims = [model_config.n_embd // model_config.n_head] + [s.n_embd // s.n_head for s in model_config.streams]
    if attention == "flex" and min(head_dims) < 16:
        raise SystemExit(f"error: fused flex attention needs head sizes of at least 16 (n_embd / n_head), got "
                         f"{head_dims}; use fewer heads, or --attention=sdpa")


def si(x):
    """x with three significant digits and an SI prefix that suits its size: 0.0512 -> 51.2m, 412e3 -> 412K"""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K"), (1, ""), (1e-3, "m")):
        if abs(x) >= scale:
            break
    return f"{x / scale:.3g}{prefix}"


def embed_dropout_at(it, cfg):
    anneal = cfg["embed_dropout_anneal"] * cfg["max_iters"]
    return cfg["embed_dropout"] * (max(0.0, 1 - it / anneal) if anneal > 0 else 1.0)


def lr_at(it, cfg):
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / cfg["warmup_iters"]
    progress = min(1.0, (it - cfg["warmup_iters"]) / max(1, cfg["max_iters"] - cfg["warmup_iters"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])


class Batches:
    """Deterministic training windows: epoch e visits the corpus' non-overlapping windows in a seeded order,
    shifted by a seeded offset of 0..T-1 tokens (none in epoch 0), so that epochs do not repeat the very same
    windows. A step's windows follow from the global position alone: resume is exact, and every process
    count sees the same global batch."""

    def __init__(self, corpus, T, main_tok, side_toks, streams, seed, pack=False, resegment=0.0, pin=False):
        self.corpus, self.T, self.main_tok, self.side_toks, self.streams = corpus, T, main_tok, side_toks, streams
        self.seed, self.pack, self.resegment, self.pin = seed, pack, resegment, pin
        n = corpus.n_windows(T)
        self.n = n - 1 if n > 1 else n  # one window of room for the offsets
        self._order = (None, None, 0)

    def positions(self, start, count):
        """Token positions of the windows at global positions start..start+count-1."""
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.n)
            if self._order[0] != epoch:
                rng = np.random.default_rng([self.seed, epoch])
                offset = int(rng.integers(self.T)) if epoch and self.n < self.corpus.n_windows(self.T) else 0
                self._order = (epoch, rng.permutation(self.n), offset)
            out.append(int(self._order[1][i]) * self.T + self._order[2])
        return out

    def get(self, positions):
        """The batch of windows starting at token `positions`; with resegment > 0, each window's tokens are
        cut into other valid segmentations of the same bytes (seeded by position: resume stays exact)."""
        if not self.resegment:
            entries = [(self.corpus, p, None) for p in positions]
            return make_batch(entries, self.side_toks, self.streams, self.T, self.pack, pin=self.pin)
        kept = budgets(self.side_toks, self.streams)
        windows = [resegmented_window(self.corpus, p, self.T, self.main_tok, self.side_toks, kept, self.resegment,
                                      f"{self.seed}:{p}") for p in positions]
        return collate(windows, self.streams, self.pack, pin=self.pin)


def validation_windows(corpus, T, eval_tokens, rank, world, B):
    """This process's share of the validation windows, in batches of B: the same eval_tokens // T evenly
    spaced windows whatever the batch size or process count (the last batch is filled with empty windows,
    which hold no targets, so that shapes stay fixed)."""
    count = max(1, min(corpus.n_windows(T), eval_tokens // T))
    mine = [int(w) * T for w in np.linspace(0, corpus.n_windows(T) - 1, count).astype(int)][rank::world]
    batches = [[(p, None) for p in mine[i:i + B]] for i in range(0, len(mine), B)]
    if batches:
        batches[-1] += [(0, 0)] * (B - len(batches[-1]))
    return batches


def start_processes():
    """(ddp, rank, local rank, world size), from torchrun's environment (single process without it)."""
    env = lambda key, default: int(os.environ.get(key, default))
    return "RANK" in os.environ, env("RANK", 0), env("LOCAL_RANK", 0), env("WORLD_SIZE", 1)


def load_split(data_dir, split, main_tok, side_toks, T):
    try:
        corpus = Corpus.load(data_dir, split, main_tok, side_toks)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    if corpus.n_windows(T) == 0:
        raise SystemExit(f"error: the {split} split has {corpus.n_tokens} tokens, too few for block_size {T}")
    return corpus


def restore(ckpt, path, model, optimizer, toks, rank, world, device_type, print0):
    """Weights, optimizer and this process's random state from a checkpoint; returns (step, data position,
    best val loss)."""
    changed = [t.spec for t in toks if ckpt["tokenizers"].get(t.spec) != t.fingerprint]
    if changed:
        raise SystemExit(f"error: tokenizer(s) {changed} differ from those the checkpoint was trained with")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {path} does not fit this model.py: {str(e)[:500]}")
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # older checkpoints: rank 0's
    if rank < len(rngs):  # each process continues its own random stream (dropout differs between them)
        torch.set_rng_state(rngs[rank]["torch"])
        if device_type == "cuda" and rngs[rank]["cuda"] is not None:
            torch.cuda.set_rng_state(rngs[rank]["cuda"])
    if world > len(rngs):
        print0(f"note: the checkpoint holds the random states of {len(rngs)} process(es); the others start new ones")
    print0(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"], ckpt["position"], ckpt["best_val_loss"]


@torch.no_grad()
def evaluate(model, val_data, val_windows, side_toks, streams, T, device, autocast, ddp):
    """(val loss, val bits per byte) over this process's validation windows, summed over processes."""
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, tokens, loss sum on text, bytes
    for windows in val_windows:
        batch = make_batch([(val_data, p, n) for p, n in windows], side_toks, streams, T)
        inputs = batch_inputs(batch, device)
        with autocast:
            _, losses = model(**inputs, reduction="none")
        nbytes = batch["target_bytes"].to(device)
        valid = inputs["targets"] >= 0
        sums += torch.stack([losses[valid].sum().double(), valid.sum().double(),
                             losses[nbytes > 0].sum().double(), nbytes.sum().double()])
    if ddp:
        dist.all_reduce(sums)
    model.train()
    return (sums[0] / sums[1]).item(), (sums[2] / (math.log(2) * sums[3])).item()


def write_checkpoint(path, state):
    """Atomically: a crash or a full disk never leaves a half-written checkpoint, nor a stray .tmp."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a failed write (a full disk) as a RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = e if isinstance(e, OSError) else e.__context__ or e
        raise SystemExit(f"error: could not write {path} ({reason}); the previous checkpoint is "
                         f"intact: free some space, then continue with --init_from=resume") from None


def main(argv):
    cfg, given = parse_config(argv)
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    cfg, ckpt, changes = open_run(cfg, given, master=int(os.environ.get("RANK", 0)) == 0)
    validate(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        lock_out_dir(cfg["out_dir"])
    # ---- processes and devices
    ddp, rank, local_rank, world = start_processes()
    device, device_type, dtype, use_compile, attention = runtime(cfg)
    check_dtype(dtype, device_type)
    if ddp and device_type == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    master = rank == 0
    print0 = lambda *a, **k: master and print(*a, **k, flush=True)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---- tokenizers, data, model
    main_tok, side_toks, model_config = model_setup(cfg)
    T = cfg["block_size"]
    train_data, val_data = (load_split(cfg["data_dir"], split, main_tok, side_toks, T) for split in ("train", "val"))
    B = cfg["batch_size"]
    per_step = B * T * world
    if cfg["total_batch_size"] % per_step:
        raise SystemExit(f"error: total_batch_size {cfg['total_batch_size']} is not a multiple of "
                         f"batch_size * block_size * processes = {per_step}")
    accum = cfg["total_batch_size"] // per_step
    torch.manual_seed(cfg["seed"] + rank)
    model = GPT(model_config).to(device)
    model.attention = attention
    model.drop_embeddings = cfg["embed_dropout"] > 0
    check_attention(model_config, attention)
    if attention == "flex" and not use_compile:
        print0("warning: flex attention without torch.compile runs an unfused, slow kernel")
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"],
                                          (cfg["beta1"], cfg["beta2"]), device_type)
    step, position, best_val = 0, 0, float("inf")
    if ckpt is not None:
        step, position, best_val = restore(ckpt, ckpt_path, model, optimizer, [main_tok] + side_toks, rank, world,
                                           device_type, print0)
        del ckpt
    ckpt_step = step  # the checkpoint on disk holds this step: no need to write it again
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if ddp:
        # the only buffers are constant rotary tables: no need to broadcast them before every forward
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device_type == "cuda" else None, broadcast_buffers=False)

    counts = raw_model.param_counts()
    flops_per_token = raw_model.flops_per_token()
    print0("params: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    print0(f"flops/token {flops_per_token / 1e9:.2f} GFLOP | {world} process(es) on {device} | {dtype} | "
           f"compile {use_compile} | attention {attention}")
    bytes_per_token = train_data.n_bytes / train_data.n_tokens
    print0(f"data: train {train_data.n_tokens:,} tokens ({bytes_per_token:.2f} bytes/token), val {val_data.n_tokens:,} | "
           f"batch {cfg['total_batch_size']:,} tokens = {B} x {T} x {world} proc x {accum} accum")
    peak = next((v for k, v in PEAK_FLOPS.items() if device_type == "cuda" and k in torch.cuda.get_device_name()), None)

    # training packs side streams (no padding to compute); validation keeps one row per window, so that
    # every token is scored, whatever else is in its batch
    train_batches = Batches(train_data, T, main_tok, side_toks, model_config.streams, cfg["seed"], pack=True,
                            resegment=cfg["resegment"], pin=device_type == "cuda")
    val_windows = validation_windows(val_data, T, cfg["eval_tokens"], rank, world, B)

    def save_checkpoint():
        """Every process calls this (it gathers their random states); the first one writes the file, which
        holds tensors and plain data only (read back with weights_only=True)."""
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}
        rngs = [mine]
        if ddp:
            rngs = [None] * world
            dist.all_gather_object(rngs, mine)
        if not master:
            return
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg,
                 "model_config": asdict(model_config), "step": step, "position": position,
                 "best_val_loss": best_val, "data": data_digest(cfg["data_dir"]),
                 "tokenizers": {t.spec: t.fingerprint for t in [main_tok] + side_toks}, "rng": rngs}
        write_checkpoint(ckpt_path, state)

    stop = {"requested": 0, "stopped": 0}  # the signal that asked to stop; the exit status it leads to

    def on_signal(signum, frame):
        if stop["requested"]:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: leave now
            return  # a job's SIGTERM can come twice (sent to every process, and forwarded by torchrun)
        stop["requested"] = signum
        print0(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def micro_batches(pos):
        """This process's share of one optimizer step: accum micro-batches of B windows."""
        return [train_batches.positions(pos + (m * world + rank) * B, B) for m in range(accum)]

    if master:
        resumed_at = ckpt_step if cfg["init_from"] == "resume" else None
        start_log(os.path.join(cfg["out_dir"], "log.jsonl"), resumed_at, changes,
                  step % cfg["eval_interval"] == 0 or step >= cfg["max_iters"])  # as the loop decides
    log_file = open(os.path.join(cfg["out_dir"], "log.jsonl"), "a") if master else None
    log = lambda **kv: log_file and (log_file.write(json.dumps(kv) + "\n"), log_file.flush())
    prefetch = ThreadPoolExecutor(1)
    fetch = lambda pos: prefetch.submit(lambda: [train_batches.get(w) for w in micro_batches(pos)])
    pending = fetch(position)
    lost, dropped, seen = np.zeros(len(side_toks)), np.zeros(len(side_toks)), 0
    t_start = time.time()
    timed_steps, timed_s, t_log, step_log = 0, 0.0, time.time(), step
    while True:
        last = step >= cfg["max_iters"]
        if step % cfg["eval_interval"] == 0 or last:
            val_loss, val_bpb = evaluate(model, val_data, val_windows, side_toks, model_config.streams, T, device,
                                         autocast, ddp)
            best_val = min(best_val, val_loss)
            print0(f"step {step}: val loss {val_loss:.4f} | val bpb {val_bpb:.4f}")
            log(step=step, val_loss=val_loss, val_bpb=val_bpb)
            if step > ckpt_step and (cfg["ckpt_interval"] == 0 or last):
                save_checkpoint()
            t_log, step_log = time.time(), step  # evaluation time stays out of the speed numbers
        if last:
            break
        if cfg["ckpt_interval"] and step > ckpt_step and step % cfg["ckpt_interval"] == 0:
            save_checkpoint()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        raw_model.embed_dropout.fill_(embed_dropout_at(step, cfg))
        batches = pending.result()
        position += B * accum * world
        pending = fetch(position)
        loss_sum = 0.0
        for m, batch in enumerate(batches):
            inputs = batch_inputs(batch, device)
            lost += batch["lost"].sum(0).numpy()
            dropped += batch["dropped"].numpy()
            seen += batch["idx"].numel()
            # DDP: all-reduce gradients only after the last micro-step
            with (model.no_sync() if ddp and m < accum - 1 else nullcontext()):
                with autocast:
                    _, loss = model(**inputs)
                (loss / accum).backward()
            loss_sum = loss_sum + loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"] or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stopping = stop["requested"]
        at_log = step % cfg["log_interval"] == 0 or step == cfg["max_iters"]
        if ddp:  # every process stops at the same step: agree at log steps (a host sync), not every step
            flag = torch.tensor(float(stopping), device=device) if at_log else None
            if at_log:
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopping = int(flag.item()) if at_log else 0
        if at_log or stopping:
            loss_val = (loss_sum / accum).item()  # waits for the device, so the timing below is real
            dt = (time.time() - t_log) / (step - step_log)
            if step_log > 0 or step > cfg["log_interval"]:  # the first interval includes compilation
                timed_steps, timed_s = timed_steps + step - step_log, timed_s + dt * (step - step_log)
            t_log, step_log = time.time(), step
            tok_s = cfg["total_batch_size"] / dt
            mfu = f" | MFU {100 * flops_per_token * tok_s / (peak * world):.1f}%" if peak else ""
            eta = (cfg["max_iters"] - step) * (timed_s / timed_steps if timed_steps else dt)
            lost_frac, dropped_frac = lost / max(seen, 1), dropped / max(seen, 1)
            side_str = "".join(f" | {t.name} lost {100 * f:.2f}% dropped {100 * d:.2f}%"
                               for t, f, d in zip(side_toks, lost_frac, dropped_frac))
            print0(f"step {step}/{cfg['max_iters']} | loss {loss_val:.4f} | lr {lr:.2e} | norm {grad_norm:.2f} | "
                   f"{si(dt)}s | {si(tok_s)} tok/s{mfu}{side_str} | eta {eta / 60:.1f}min")
            log(step=step, loss=loss_val, lr=lr, dt=dt, tok_s=tok_s, lost=lost_frac.tolist(),
                dropped=dropped_frac.tolist())
            lost[:], dropped[:], seen = 0, 0, 0
        if stopping:
            stop["stopped"] = 128 + stopping  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
            save_checkpoint()
            print0(f"stopped at step {step}; continue with --init_from=resume (checkpoint {ckpt_path})")
            break
    prefetch.shutdown(cancel_futures=True)
    print0(f"done in {(time.time() - t_start) / 60:.1f} min; best val loss {best_val:.4f}")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    unlock_out_dir()
    if stop["stopped"]:
        raise SystemExit(stop["stopped"])  # not 0: a scheduler (or torchrun) sees that the run did not finish


if __name__ == "__main__":
    main(sys.argv[1:])
