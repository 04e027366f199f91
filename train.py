"""
Train a bytecross model (or its plain-GPT baseline: streams=[]).

    python train.py config/cpu_demo.py                         # CPU, a few minutes
    python train.py config/gpt2_bytes.py --max_iters=2000      # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2_bytes.py   # DDP
    (add --nnodes etc. to torchrun for multi-node)

Config files are Python files that assign options; --key=value overrides them. Unknown keys are
errors. Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits with status
128 + the signal's number (130, 143): the run did not finish. --init_from=resume continues exactly
where it stopped (weights, optimizer, each process's RNG, data position, step); --init_from=auto
resumes when out_dir has a checkpoint.
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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from data import (Corpus, DataError, budgets, collate, data_digest, make_batch, resegmented_window,
                  write_atomic)
from model import GPT, GPTConfig, batch_inputs, pick_device, read_checkpoint
from tokenizers import Tokenizer

DEFAULTS = dict(
    # data and output
    data_dir="data/shakespeare",   # made by prepare.py
    out_dir="out",
    init_from="scratch",           # 'scratch', 'resume' (out_dir/ckpt.pt), 'auto' (resume if any)
    # model (see model.py); the default is GPT-2 with a byte branch read by main layer 0
    tokenizer="gpt2",
    block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    streams=[dict(tokenizer="bytes", n_layer=2, n_head=2, n_embd=128, window=256, budget=6144,
                  packed_budget=4096, cross_layers=[0], locality=None)],  # as config/gpt2_bytes.py
    # optimization
    batch_size=16,                 # windows per micro-step per process
    total_batch_size=16 * 1024,    # tokens per optimizer step, over all processes and micro-steps
    max_iters=5000,
    learning_rate=6e-4, min_lr=6e-5, warmup_iters=200,  # linear warmup, then cosine decay to min_lr
    weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,   # grad_clip 0: no clipping
    # making tokens need their bytes (README, Findings); both act in training only
    resegment=0.0,                 # share of multi-byte tokens cut in two (same bytes, other ids)
    embed_dropout=0.0,             # chance a token's embedding is zeroed (identity: bytes only)
    embed_dropout_anneal=0.0,      # >0: linear decay to 0 over this fraction of max_iters
    branch_lr_scale=1.0,           # learning rate of side streams and cross-attention, x the main
    # evaluation, logging, checkpoints
    eval_interval=250, eval_tokens=2**18, log_interval=10,
    ckpt_interval=0,               # 0: checkpoint at each evaluation
    # system
    device="auto",                 # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",                  # 'bfloat16', 'float32', 'auto' (bf16 on capable GPUs, else fp32)
    compile="auto",                # torch.compile: 'auto' is on for CUDA
    compile_mode="default",        # torch.compile's mode; 'reduce-overhead' replays CUDA graphs,
                                   # fewer kernel launches for a host-bound step (README, Results)
    attention="auto",              # 'flex' (fused, GPU) or 'sdpa' (reference); 'auto': flex on CUDA
    pack="auto",                   # training packs side streams that have a packed_budget; 'auto':
                                   # with flex only (SDPA's dense masks grow with a row's square)
    seed=1337,
)
MODEL_KEYS = ("tokenizer", "block_size", "n_layer", "n_head", "n_embd", "dropout", "streams")
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16, by device name


# ---------------------------------------------------------------------------------------------
# configuration


def parse_config(argv):
    """Config files (Python assignments) then --key=value overrides, checked against DEFAULTS.
    Returns the config and the set of keys given explicitly."""
    cfg, given = dict(DEFAULTS), set()
    accepts = {bool: lambda v: isinstance(v, bool),
               int: lambda v: type(v) is int or type(v) is float and v.is_integer(),
               float: lambda v: type(v) in (int, float),
               str: lambda v: isinstance(v, str),
               list: lambda v: isinstance(v, (list, tuple))}
    kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
             list: "a list"}

    def set_key(key, value, where):
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            raise SystemExit(f"error: unknown config key {key!r} ({where})"
                             + (f"; did you mean {close[0]}?" if close else "")
                             + " Valid keys:\n  " + ", ".join(sorted(DEFAULTS)))
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
                if (not key.startswith("_") and not callable(value)
                        and type(value).__name__ != "module"):
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
    """Stop, with one line per bad value, on options that would crash late or quietly spoil a
    run."""
    rules = {key: (lambda v: v >= 1, "an integer >= 1") for key in (
        "batch_size", "block_size", "total_batch_size", "eval_interval", "eval_tokens",
        "log_interval", "n_layer", "n_head", "n_embd")}
    rules.update({key: (lambda v: v >= 0, "an integer >= 0") for key in (
        "max_iters", "warmup_iters", "ckpt_interval", "seed")})
    rules.update({key: (lambda v: v >= 0, ">= 0") for key in (
        "learning_rate", "min_lr", "weight_decay")})
    rules.update({key: (lambda v: 0 <= v < 1, "in [0, 1)") for key in (
        "dropout", "beta1", "beta2", "resegment", "embed_dropout")})
    rules["embed_dropout_anneal"] = (lambda v: 0 <= v <= 1, "in [0, 1] (0: constant)")
    rules["branch_lr_scale"] = (lambda v: v > 0, "> 0")
    rules.update({key: (lambda v: isinstance(v, str) and v != "", "a non-empty string") for key in (
        "data_dir", "out_dir", "tokenizer")})
    rules.update({
        "grad_clip": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
        "dtype": (lambda v: v in ("auto", "bfloat16", "float32"),
                  "'auto', 'bfloat16' or 'float32' (float16 would need loss scaling, which "
                  "train.py does not do)"),
        "compile": (lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        "compile_mode": (lambda v: v in COMPILE_MODES,
                         ", ".join(map(repr, COMPILE_MODES[:-1])) + f" or {COMPILE_MODES[-1]!r}"),
        "attention": (lambda v: v in ("auto", "flex", "sdpa"), "'auto', 'flex' or 'sdpa'"),
        "pack": (lambda v: v in (True, False, "auto"), "True, False or 'auto'"),
        "device": (lambda v: v == "auto" or isinstance(v, str)
                   and v.split(":")[0] in ("cpu", "cuda", "mps"),
                   "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        "streams": (lambda v: all(isinstance(s, dict) for s in v),
                    "a list of dicts (model.StreamConfig)"),
    })
    errors = [f"error: {key}={cfg[key]!r}: must be {what}"
              for key, (ok, what) in rules.items() if not ok(cfg[key])]
    errors += [f"error: {key}={value!r}: must be plain data (numbers, strings, lists, dicts)"
               for key, value in cfg.items() if not plain(value)]
    width, heads = cfg["n_embd"], cfg["n_head"]
    # rotary embeddings need even head sizes
    if width >= 1 and heads >= 1 and (width % heads or width // heads % 2):
        errors.append(f"error: n_embd={cfg['n_embd']}, n_head={cfg['n_head']}: n_embd must split "
                      f"into n_head heads of even size")
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
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
                if frame.filename == path][-1]
        raise SystemExit(f"error: {path} line {line}: {type(e).__name__}: {e}") from None
    return scope


# ---------------------------------------------------------------------------------------------
# out_dir: its lock, log and checkpoint


_lock = None  # this process's lock on its out_dir


def lock_out_dir(out_dir):
    """Hold out_dir/train.lock while the run lives (the OS drops it when the process ends, however
    it ends): a second run into the same out_dir stops at once instead of overwriting the first
    one's files."""
    global _lock
    unlock_out_dir()  # held by a run this process started earlier (tests call main() repeatedly)
    os.makedirs(out_dir, exist_ok=True)
    _lock = open(os.path.join(out_dir, "train.lock"), "a+")
    try:
        fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _lock.seek(0)
        pid = _lock.read().strip() or "?"
        raise SystemExit(f"error: another training run (pid {pid}) is using {out_dir}: wait for it "
                         f"to end, or pick another --out_dir") from None
    _lock.truncate(0)
    _lock.write(f"{os.getpid()}\n")
    _lock.flush()


def unlock_out_dir():
    global _lock
    if _lock is not None:
        _lock.close()
        _lock = None


def start_log(path, resumed_at, changes, evaluates_again):
    """A new log.jsonl; on resume, the log cut back to the checkpoint's step (the steps after it run
    again, and would otherwise appear twice), then a record of the resume and of any options that
    changed. evaluates_again: the resumed run evaluates at its first step, so the evaluation logged
    there goes."""
    keep = []
    if resumed_at is not None and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                # at the checkpoint's step: its evaluation stays unless it runs again; an earlier
                # resume from this same step goes (its steps were cut, this record replaces it)
                if r.get("step", 0) < resumed_at or r.get("step") == resumed_at and not (
                        evaluates_again and "val_loss" in r or r.get("resumed")):
                    keep.append(line)
    if resumed_at is not None:
        keep.append(json.dumps({"step": resumed_at, "resumed": True, "changed": changes}) + "\n")
    write_atomic(path, "".join(keep))


def write_checkpoint(path, state):
    """Atomically: a crash or a full disk never leaves a half-written checkpoint, nor a stray
    .tmp."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a failed write (full disk) as RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = e if isinstance(e, OSError) else e.__context__ or e
        raise SystemExit(f"error: could not write {path} ({reason}); the previous checkpoint is "
                         f"intact: free some space, then continue with --init_from=resume"
                         ) from None


def open_run(cfg, given, master):
    """Settle init_from, and on resume read the checkpoint: its config, with what is given
    explicitly on top. Returns (config, checkpoint or None, {option: [checkpoint's, now]} for what
    changed)."""
    if cfg["init_from"] not in ("scratch", "resume", "auto"):
        raise SystemExit(f"error: init_from={cfg['init_from']!r}: must be 'scratch', 'resume' or "
                         f"'auto'")
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    resume = (cfg["init_from"] == "resume"
              or cfg["init_from"] == "auto" and os.path.exists(ckpt_path))
    if resume and not os.path.exists(ckpt_path):
        raise SystemExit(f"error: --init_from=resume but {ckpt_path} does not exist")
    if not resume:
        if os.path.exists(ckpt_path):
            raise SystemExit(f"error: {ckpt_path} exists. Continue it with --init_from=resume, or "
                             f"pick another --out_dir (or delete it) to start afresh")
        return dict(cfg, init_from="scratch"), None, {}
    ckpt = read_checkpoint(ckpt_path, ("config", "model", "optimizer"),
                           hint="; start afresh in another out_dir")
    saved = ckpt["config"]
    # dropout is in the model config but shapes no weight: a resume may change it (with a warning)
    diff = [k for k in MODEL_KEYS if k != "dropout" and k in given and cfg[k] != saved.get(k)]
    if diff:
        raise SystemExit(f"error: the checkpoint in {cfg['out_dir']} has a different architecture ("
                         + "; ".join(f"{k}: {saved.get(k)!r} there, {cfg[k]!r} here" for k in diff)
                         + "): resume with its config, or train into another out_dir")
    changed = {k: [saved.get(k), cfg[k]] for k in sorted(given)
               if k not in ("init_from", "out_dir") and cfg[k] != saved.get(k)}
    cfg = {**DEFAULTS, **saved, **{k: cfg[k] for k in given},  # DEFAULTS: options added since
           "init_from": "resume", "out_dir": cfg["out_dir"]}
    if ckpt.get("data") not in (None, data_digest(cfg["data_dir"])):
        changed["data"] = ["the data the checkpoint was trained on",
                           f"other data in {cfg['data_dir']}"]
    if master and changed:
        print("warning: resuming with options that differ from the checkpoint's (which are used "
              "otherwise):\n"
              + "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()),
              flush=True)
    return cfg, ckpt, changed


# ---------------------------------------------------------------------------------------------
# model, processes and devices


def model_setup(cfg):
    """The tokenizers and the model config that a train config describes (clear errors for bad
    values)."""
    main_tok = Tokenizer(cfg["tokenizer"])
    side_toks = [Tokenizer(s.get("tokenizer", "bytes")) for s in cfg["streams"]]
    streams = [dict(s, vocab_size=t.vocab_size) for s, t in zip(cfg["streams"], side_toks)]
    sizes = {k: cfg[k] for k in MODEL_KEYS if k not in ("tokenizer", "streams")}
    try:
        model_config = GPTConfig(tokenizer=cfg["tokenizer"], vocab_size=main_tok.vocab_size,
                                 **sizes, streams=streams)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: bad model config: {e}")
    return main_tok, side_toks, model_config


def runtime(cfg):
    """(device, device type, dtype, compile, attention), each 'auto' settled for this machine."""
    device = pick_device(cfg["device"])
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = cfg["dtype"]
    if dtype == "auto":
        bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16 else "float32"
    use_compile = cfg["compile"] if cfg["compile"] != "auto" else device_type == "cuda"
    attention = cfg["attention"]
    if attention == "auto":
        attention = "flex" if device_type == "cuda" else "sdpa"
    return device, device_type, dtype, use_compile, attention


def packs(cfg, attention):
    """Whether training packs side streams: the pack key, 'auto' settled as with flex attention only
    (a dense SDPA mask over a packed row of B * packed_budget elements grows with its square)."""
    return cfg["pack"] if cfg["pack"] != "auto" else attention == "flex"


def check_attention(model_config, attention):
    head_dims = [model_config.n_embd // model_config.n_head]
    head_dims += [s.n_embd // s.n_head for s in model_config.streams]
    if attention == "flex" and min(head_dims) < 16:
        raise SystemExit(f"error: fused flex attention needs head sizes of at least 16 (n_embd / "
                         f"n_head), got {head_dims}; use fewer heads, or --attention=sdpa")


def start_processes():
    """(ddp, rank, local rank, world size), from torchrun's environment (single process without
    it)."""
    env = lambda key, default: int(os.environ.get(key, default))
    return "RANK" in os.environ, env("RANK", 0), env("LOCAL_RANK", 0), env("WORLD_SIZE", 1)


@dataclass
class Runtime:
    """This process among the others, and the device, precision and kernels it trains with."""
    ddp: bool
    rank: int
    local_rank: int
    world: int
    device: str
    device_type: str
    dtype: str
    use_compile: bool
    attention: str
    autocast: Any           # bfloat16 autocast, or a no-op
    peak_flops: Any         # the device's dense bf16 FLOP/s where known (for MFU), else None

    @property
    def master(self):
        return self.rank == 0

    def print0(self, *args, **kwargs):
        """print, on the first process only"""
        if self.master:
            print(*args, **kwargs, flush=True)


def peak_flops(device):
    """The device's dense bf16 peak in FLOP/s, for MFU; None where it is not known."""
    if torch.device(device).type != "cuda":
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name(device)), None)


def start_runtime(cfg):
    """Settle the 'auto' options, pick this process's device and join the other processes."""
    ddp, rank, local_rank, world = start_processes()
    device, device_type, dtype, use_compile, attention = runtime(cfg)
    check_dtype(dtype, device_type)
    if ddp and device_type == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else nullcontext())
    # TF32 matmuls under bf16 autocast only: dtype=float32 means float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = dtype == "bfloat16"
    peak = peak_flops(device)
    return Runtime(ddp, rank, local_rank, world, device, device_type, dtype, use_compile, attention,
                   autocast, peak)


# ---------------------------------------------------------------------------------------------
# data


def load_split(data_dir, split, main_tok, side_toks, T):
    try:
        corpus = Corpus.load(data_dir, split, main_tok, side_toks)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    if corpus.n_windows(T) == 0:
        raise SystemExit(f"error: the {split} split has {corpus.n_tokens} tokens, too few for "
                         f"block_size {T}")
    return corpus


class Batches:
    """Deterministic training windows: epoch e visits the corpus' non-overlapping windows in a
    seeded order, shifted by a seeded offset of 0..T-1 tokens (none in epoch 0), so that epochs do
    not repeat the very same windows. A step's windows follow from the global position alone:
    resume is exact, and every process count sees the same global batch."""

    def __init__(self, corpus, T, main_tok, side_toks, streams, seed, pack=False, resegment=0.0,
                 pin=False):
        self.corpus, self.T, self.main_tok, self.side_toks = corpus, T, main_tok, side_toks
        self.streams, self.seed, self.pack, self.resegment, self.pin = (
            streams, seed, pack, resegment, pin)
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
                shifted = epoch and self.n < self.corpus.n_windows(self.T)
                offset = int(rng.integers(self.T)) if shifted else 0
                self._order = (epoch, rng.permutation(self.n), offset)
            out.append(int(self._order[1][i]) * self.T + self._order[2])
        return out

    def get(self, positions):
        """The batch of windows starting at token `positions`; with resegment > 0, each window's
        tokens are cut into other valid segmentations of the same bytes (each token's cut drawn from
        the run seed and its position in the corpus: causal, and resume stays exact)."""
        if not self.resegment:
            entries = [(self.corpus, p, None) for p in positions]
            return make_batch(entries, self.side_toks, self.streams, self.T, self.pack,
                              pin=self.pin)
        kept = budgets(self.side_toks, self.streams)
        windows = [resegmented_window(self.corpus, p, self.T, self.main_tok, self.side_toks, kept,
                                      self.resegment, self.seed) for p in positions]
        return collate(windows, self.streams, self.pack, pin=self.pin)


def validation_windows(corpus, T, eval_tokens, rank, world, B):
    """This process's share of the validation windows, in batches of B: the same eval_tokens // T
    evenly spaced windows whatever the batch size or process count (the last batch is filled with
    empty windows, which hold no targets, so that shapes stay fixed)."""
    count = max(1, min(corpus.n_windows(T), eval_tokens // T))
    spaced = np.linspace(0, corpus.n_windows(T) - 1, count).astype(int)
    mine = [int(w) * T for w in spaced][rank::world]
    batches = [[(p, None) for p in mine[i:i + B]] for i in range(0, len(mine), B)]
    if batches:
        batches[-1] += [(0, 0)] * (B - len(batches[-1]))
    return batches


# ---------------------------------------------------------------------------------------------
# schedules and numbers


def si(x):
    """x with three significant digits and an SI prefix that suits its size: 0.0512 -> 51.2m,
    412e3 -> 412K"""
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
    decay_iters = max(1, cfg["max_iters"] - cfg["warmup_iters"])
    progress = min(1.0, (it - cfg["warmup_iters"]) / decay_iters)
    lr, min_lr = cfg["learning_rate"], cfg["min_lr"]
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


# ---------------------------------------------------------------------------------------------
# setting up a run


def configure(argv):
    """The run's config (on resume: the checkpoint's, with what argv gives explicitly on top), the
    checkpoint or None, and {option: [checkpoint's, now]} for what changed. The first process
    locks out_dir."""
    master = start_processes()[1] == 0
    cfg, given = parse_config(argv)
    cfg, ckpt, changes = open_run(cfg, given, master)
    validate(cfg)
    if master:
        lock_out_dir(cfg["out_dir"])
    return cfg, ckpt, changes


@dataclass
class Run:
    """A training run: what set_up made, and the state that the loop advances and a checkpoint
    holds (step, position, best_val)."""
    cfg: dict
    rt: Runtime
    main_tok: Tokenizer
    side_toks: list
    model_config: GPTConfig
    train_data: Corpus
    val_data: Corpus
    accum: int                      # micro-steps per optimizer step
    raw_model: GPT
    optimizer: torch.optim.Optimizer
    model: Any = None               # what runs: raw_model, compiled and/or wrapped in DDP
    flops_per_token: float = 0.0
    train_batches: Batches = None
    val_windows: list = None        # this process's validation batches
    step: int = 0
    position: int = 0               # global position of the next step's first window (Batches)
    best_val: float = math.inf
    ckpt_step: int = 0              # the checkpoint on disk holds this step: no need to rewrite it
    log_file: Any = None            # log.jsonl, open on the first process only

    @property
    def ckpt_path(self):
        return os.path.join(self.cfg["out_dir"], "ckpt.pt")

    def log(self, **record):
        """One line of log.jsonl, flushed at once (a crash loses no line)."""
        if self.log_file:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()


def set_up(cfg, rt, ckpt):
    """Tokenizers, data, model and optimizer; with a checkpoint, resumed from it."""
    main_tok, side_toks, model_config = model_setup(cfg)
    train_data, val_data, accum = load_data(cfg, rt, main_tok, side_toks)
    raw_model, optimizer = build_model(cfg, model_config, rt.device, rt.attention, rt.rank)
    if rt.attention == "flex" and not rt.use_compile:
        rt.print0("warning: flex attention without torch.compile runs an unfused, slow kernel")
    run = Run(cfg, rt, main_tok, side_toks, model_config, train_data, val_data, accum, raw_model,
              optimizer)
    if ckpt is not None:
        run.step, run.position, run.best_val = restore(ckpt, run)
    run.ckpt_step = run.step
    run.model = compile_and_wrap(raw_model, rt, cfg["compile_mode"])
    run.flops_per_token = raw_model.flops_per_token()
    print_summary(run)
    # training packs side streams (no padding to compute); validation keeps one row per window, so
    # that every token is scored, whatever else is in its batch
    T, B = cfg["block_size"], cfg["batch_size"]
    run.train_batches = Batches(train_data, T, main_tok, side_toks, model_config.streams,
                                cfg["seed"], pack=packs(cfg, rt.attention),
                                resegment=cfg["resegment"],
                                pin=rt.device_type == "cuda")
    run.val_windows = validation_windows(val_data, T, cfg["eval_tokens"], rt.rank, rt.world, B)
    return run


def load_data(cfg, rt, main_tok, side_toks):
    """Both splits, and the micro-steps per optimizer step that make total_batch_size tokens."""
    T = cfg["block_size"]
    train_data, val_data = (load_split(cfg["data_dir"], split, main_tok, side_toks, T)
                            for split in ("train", "val"))
    per_step = cfg["batch_size"] * T * rt.world
    if cfg["total_batch_size"] % per_step:
        raise SystemExit(f"error: total_batch_size {cfg['total_batch_size']} is not a multiple of "
                         f"batch_size * block_size * processes = {per_step}")
    return train_data, val_data, cfg["total_batch_size"] // per_step


def build_model(cfg, model_config, device, attention, rank=0):
    """The model and its optimizer (bench.py builds them here too, to time what trains). Each
    process seeds its own random stream (seed + rank), so that dropout masks differ between
    processes; DDP starts them all from rank 0's weights."""
    torch.manual_seed(cfg["seed"] + rank)
    model = GPT(model_config).to(device)
    model.attention = attention
    model.drop_embeddings = cfg["embed_dropout"] > 0
    check_attention(model_config, attention)
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"],
                                          (cfg["beta1"], cfg["beta2"]), torch.device(device).type,
                                          cfg["branch_lr_scale"])
    return model, optimizer


def optimizer_step(model, optimizer, grad_clip):
    """Clip the gradients' norm (grad_clip 0: no clipping), step, and drop the gradients. Returns
    the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def restore(ckpt, run):
    """Weights, optimizer and this process's random state from a checkpoint; returns (step, data
    position, best val loss)."""
    rt, path = run.rt, run.ckpt_path
    changed = [t.spec for t in [run.main_tok] + run.side_toks
               if ckpt["tokenizers"].get(t.spec) != t.fingerprint]
    if changed:
        raise SystemExit(f"error: tokenizer(s) {changed} differ from those the checkpoint was "
                         f"trained with")
    try:
        run.raw_model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {path} does not fit this model.py: {str(e)[:500]}")
    scales = [group.get("lr_scale", 1.0) for group in run.optimizer.param_groups]
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:  # parameter groups differ: one of 1 and another branch_lr_scale
        raise SystemExit(f"error: {path}: its optimizer state has other parameter groups ({e}); "
                         f"was branch_lr_scale changed between 1 and another value?")
    for group, scale in zip(run.optimizer.param_groups, scales):  # this run's, not the checkpoint's
        group["lr_scale"] = scale
    # older checkpoints hold rank 0's random state only
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    if rt.rank < len(rngs):  # each process continues its own random stream (dropout differs)
        torch.set_rng_state(rngs[rt.rank]["torch"])
        if rt.device_type == "cuda" and rngs[rt.rank]["cuda"] is not None:
            torch.cuda.set_rng_state(rngs[rt.rank]["cuda"])
    if rt.world > len(rngs):
        rt.print0(f"note: the checkpoint holds the random states of {len(rngs)} process(es); the "
                  f"others start new ones")
    rt.print0(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"], ckpt["position"], ckpt["best_val_loss"]


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model, mode="default"):
    """torch.compile with static shapes: training and evaluation batches each get their own graph.
    With automatic dynamic shapes, the step-0 evaluation made the training graph recompile with
    symbolic sizes; static graphs are the ones whose FlexAttention gradients were checked against
    SDPA on an H200 (results/flex_gradient_bug/)."""
    return torch.compile(model, dynamic=False, **({} if mode == "default" else dict(mode=mode)))


def new_graph_step(mode):
    """With CUDA graphs (reduce-overhead, max-autotune), each model call starts a new replay: the
    previous call's outputs are no longer read (losses are summed into new tensors first)."""
    if mode in ("reduce-overhead", "max-autotune"):
        torch.compiler.cudagraph_mark_step_begin()


def compile_and_wrap(model, rt, mode="default"):
    """What the loop runs: the model compiled (torch.compile) and/or wrapped for DDP."""
    if rt.use_compile:
        model = compile_model(model, mode)
    if rt.ddp:
        # the only buffers are constant rotary tables: no need to broadcast them at each forward
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None,
            broadcast_buffers=False)
    return model


def print_summary(run):
    rt, cfg, data = run.rt, run.cfg, run.train_data
    counts = run.raw_model.param_counts()
    rt.print0("params: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    # the machine in the log too: runs summarised together may have trained on different ones
    where = rt.device
    if rt.device.startswith("cuda"):
        where += f" ({torch.cuda.get_device_name(rt.device)})"
    rt.print0(f"flops/token {run.flops_per_token / 1e9:.2f} GFLOP | {rt.world} process(es) on "
              f"{where} | torch {torch.__version__} | {rt.dtype} | compile {rt.use_compile} | "
              f"attention {rt.attention}")
    bytes_per_token = data.n_bytes / data.n_tokens
    rt.print0(f"data: train {data.n_tokens:,} tokens ({bytes_per_token:.2f} bytes/token), val "
              f"{run.val_data.n_tokens:,} | batch {cfg['total_batch_size']:,} tokens = "
              f"{cfg['batch_size']} x {cfg['block_size']} x {rt.world} proc x {run.accum} accum")


def open_log(run, changes):
    """log.jsonl, on the first process: started afresh, or on resume cut back to the checkpoint's
    step, with a record of the resume."""
    if not run.rt.master:
        return None
    cfg, path = run.cfg, os.path.join(run.cfg["out_dir"], "log.jsonl")
    resumed_at = run.ckpt_step if cfg["init_from"] == "resume" else None
    # as the loop decides: a step that is evaluated again has its old evaluation cut from the log
    evaluates_first = run.step % cfg["eval_interval"] == 0 or run.step >= cfg["max_iters"]
    start_log(path, resumed_at, changes, evaluates_first)
    return open(path, "a")


# ---------------------------------------------------------------------------------------------
# the pieces of a training step


class StopSignal:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save a checkpoint and exit."""

    def __init__(self, print0):
        self.signum = 0  # the signal that asked to stop
        self.print0 = print0
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: leave now
            # a job's SIGTERM can come twice (sent to every process, and forwarded by torchrun)
            return
        self.signum = signum
        self.print0(f"\n{signal.Signals(signum).name}: finishing this step, then saving a "
                    f"checkpoint")


class Prefetch:
    """Makes the next step's micro-batches in a thread while this step computes."""

    def __init__(self, run):
        self.run = run
        self.pool = ThreadPoolExecutor(1)
        self.pending = self.pool.submit(self.load, run.position)

    def load(self, pos):
        """This process's share of the step at global position pos: accum micro-batches of B
        windows."""
        run, B = self.run, self.run.cfg["batch_size"]
        windows = [run.train_batches.positions(pos + (m * run.rt.world + run.rt.rank) * B, B)
                   for m in range(run.accum)]
        return [run.train_batches.get(w) for w in windows]

    def next(self):
        """This step's micro-batches; moves run.position on to the next step's, and starts making
        them."""
        batches = self.pending.result()
        run = self.run
        run.position += run.cfg["batch_size"] * run.accum * run.rt.world
        self.pending = self.pool.submit(self.load, run.position)
        return batches

    def close(self):
        self.pool.shutdown(cancel_futures=True)


class Meter:
    """Speed and the side streams' lost and dropped tokens, over the steps since the last log line.
    An evaluation restarts the clock: its time stays out of the speed numbers."""

    def __init__(self, step, n_side):
        self.lost, self.dropped, self.seen = np.zeros(n_side), np.zeros(n_side), 0
        self.timed_steps, self.timed_s = 0, 0.0  # the steps the ETA rests on, and their seconds
        self.warm = False  # the first interval of a run (fresh or resumed) includes compilation
        self.restart(step)

    def restart(self, step):
        self.t, self.step = time.time(), step

    def count(self, batch):
        self.lost += batch["lost"].sum(0).numpy()
        self.dropped += batch["dropped"].numpy()
        self.seen += batch["idx"].numel()

    def lap(self, step):
        """(seconds per step since the clock started, seconds per step to expect from now on)"""
        steps = step - self.step
        dt = (time.time() - self.t) / steps
        if self.warm:
            self.timed_steps, self.timed_s = self.timed_steps + steps, self.timed_s + dt * steps
        self.warm = True
        self.restart(step)
        return dt, (self.timed_s / self.timed_steps if self.timed_steps else dt)

    def side_shares(self):
        """The shares of tokens whose side-stream tokens were lost and dropped (one per stream),
        since the last call."""
        lost, dropped = self.lost / max(self.seen, 1), self.dropped / max(self.seen, 1)
        self.lost[:], self.dropped[:], self.seen = 0, 0, 0
        return lost, dropped


def set_schedules(run):
    """This step's learning rate and embedding dropout; returns the learning rate."""
    lr = lr_at(run.step, run.cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    run.raw_model.embed_dropout.fill_(embed_dropout_at(run.step, run.cfg))
    return lr


def train_step(run, batches, meter):
    """Forward and backward over this process's micro-batches, then one optimizer step. Returns
    the micro-batches' summed loss (on the device: no sync) and the gradient norm."""
    rt, accum = run.rt, run.accum
    loss_sum = 0.0
    for m, batch in enumerate(batches):
        inputs = batch_inputs(batch, rt.device)
        meter.count(batch)
        # DDP: all-reduce gradients only after the last micro-step
        with (run.model.no_sync() if rt.ddp and m < accum - 1 else nullcontext()):
            new_graph_step(run.cfg["compile_mode"])
            with rt.autocast:
                _, loss = run.model(**inputs)
            (loss / accum).backward()
        loss_sum = loss_sum + loss.detach()
    grad_norm = optimizer_step(run.raw_model, run.optimizer, run.cfg["grad_clip"])
    run.step += 1
    return loss_sum, grad_norm


def agree_to_stop(rt, signum, at_log):
    """The signal that stops the run after this step, or 0. Every process must stop at the same
    step: with DDP they agree at log steps (a host sync), not at every step."""
    if not rt.ddp:
        return signum
    if not at_log:
        return 0
    flag = torch.tensor(float(signum), device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def log_progress(run, meter, loss_sum, lr, grad_norm):
    """The line of a log step, printed and in log.jsonl."""
    cfg, step, side_toks = run.cfg, run.step, run.side_toks
    loss = (loss_sum / run.accum).item()  # waits for the device, so the timing below is real
    dt, dt_ahead = meter.lap(step)
    tok_s = cfg["total_batch_size"] / dt
    peak = run.rt.peak_flops
    mfu = f" | MFU {100 * run.flops_per_token * tok_s / (peak * run.rt.world):.1f}%" if peak else ""
    eta = (cfg["max_iters"] - step) * dt_ahead
    lost, dropped = meter.side_shares()
    side = "".join(f" | {t.name} lost {100 * f:.2f}% dropped {100 * d:.2f}%"
                   for t, f, d in zip(side_toks, lost, dropped))
    run.rt.print0(f"step {step}/{cfg['max_iters']} | loss {loss:.4f} | lr {lr:.2e} | norm "
                  f"{grad_norm:.2f} | {si(dt)}s | {si(tok_s)} tok/s{mfu}{side} | eta "
                  f"{eta / 60:.1f}min")
    run.log(step=step, loss=loss, lr=lr, dt=dt, tok_s=tok_s, lost=lost.tolist(),
            dropped=dropped.tolist())


@torch.no_grad()
def evaluate(run):
    """(val loss, val bits per byte) over this process's validation windows, summed over
    processes."""
    model, rt, streams = run.model, run.rt, run.model_config.streams
    model.eval()
    # loss sum, tokens, loss sum on text, bytes
    acc = torch.float32 if rt.device_type == "mps" else torch.float64  # MPS has no float64
    sums = torch.zeros(4, device=rt.device, dtype=acc)
    for windows in run.val_windows:
        entries = [(run.val_data, p, n) for p, n in windows]
        batch = make_batch(entries, run.side_toks, streams, run.cfg["block_size"])
        inputs = batch_inputs(batch, rt.device)
        new_graph_step(run.cfg["compile_mode"])
        with rt.autocast:
            _, losses = model(**inputs, reduction="none")
        nbytes = batch["target_bytes"].to(rt.device)
        valid = inputs["targets"] >= 0
        sums += torch.stack([losses[valid].sum().to(acc), valid.sum().to(acc),
                             losses[nbytes > 0].sum().to(acc), nbytes.sum().to(acc)])
    if rt.ddp:
        dist.all_reduce(sums)
    model.train()
    return (sums[0] / sums[1]).item(), (sums[2] / (math.log(2) * sums[3])).item()


def evaluate_and_save(run, last):
    """Evaluate (printed and logged); checkpoint at each evaluation, or with ckpt_interval at the
    last one only."""
    val_loss, val_bpb = evaluate(run)
    run.best_val = min(run.best_val, val_loss)
    run.rt.print0(f"step {run.step}: val loss {val_loss:.4f} | val bpb {val_bpb:.4f}")
    run.log(step=run.step, val_loss=val_loss, val_bpb=val_bpb)
    if run.step > run.ckpt_step and (run.cfg["ckpt_interval"] == 0 or last):
        save_checkpoint(run)


def save_checkpoint(run):
    """Every process calls this (it gathers their random states); the first one writes the file,
    which holds tensors and plain data only (read back with weights_only=True)."""
    rt = run.rt
    mine = {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if rt.device_type == "cuda" else None}
    rngs = [mine]
    if rt.ddp:
        rngs = [None] * rt.world
        dist.all_gather_object(rngs, mine)
    if not rt.master:
        return
    state = {"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "config": run.cfg, "model_config": asdict(run.model_config), "step": run.step,
             "position": run.position, "best_val_loss": run.best_val,
             "data": data_digest(run.cfg["data_dir"]),
             "tokenizers": {t.spec: t.fingerprint for t in [run.main_tok] + run.side_toks},
             "rng": rngs}
    write_checkpoint(run.ckpt_path, state)


def finish(run, prefetch, t_start, exit_status):
    prefetch.close()
    run.rt.print0(f"done in {(time.time() - t_start) / 60:.1f} min; best val loss "
                  f"{run.best_val:.4f}")
    if run.log_file:
        run.log_file.close()
    unlock_out_dir()
    if run.rt.ddp:
        # Every process leaves together, then ends here, skipping the interpreter's teardown: there,
        # freeing DDP's reducer destroys the gloo process group while holding the GIL, and joins a
        # gloo thread that may be waiting for the GIL to free a finished collective's tensors (a
        # torch deadlock, seen in CI with torch 2.13 and two CPU processes). Nothing is left to save.
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status)


# ---------------------------------------------------------------------------------------------
# the run: set up, then train step by step, evaluating and checkpointing on the way


def main(argv):
    cfg, ckpt, changes = configure(argv)
    rt = start_runtime(cfg)
    run = set_up(cfg, rt, ckpt)
    del ckpt  # restored into the model and optimizer: free its memory
    stop = StopSignal(rt.print0)
    run.log_file = open_log(run, changes)
    prefetch = Prefetch(run)
    t_start = time.time()
    meter = Meter(run.step, len(run.side_toks))
    exit_status = 0
    while True:
        last = run.step >= cfg["max_iters"]
        if run.step % cfg["eval_interval"] == 0 or last:
            evaluate_and_save(run, last)
            meter.restart(run.step)  # evaluation time stays out of the speed numbers
        if last:
            break
        every = cfg["ckpt_interval"]
        if every and run.step > run.ckpt_step and run.step % every == 0:
            save_checkpoint(run)
        lr = set_schedules(run)
        loss_sum, grad_norm = train_step(run, prefetch.next(), meter)
        at_log = run.step % cfg["log_interval"] == 0 or run.step == cfg["max_iters"]
        stopping = agree_to_stop(rt, stop.signum, at_log)
        if at_log or stopping:
            log_progress(run, meter, loss_sum, lr, grad_norm)
        if stopping:
            # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
            exit_status = 128 + stopping
            save_checkpoint(run)
            rt.print0(f"stopped at step {run.step}; continue with --init_from=resume (checkpoint "
                      f"{run.ckpt_path})")
            break
    finish(run, prefetch, t_start, exit_status)
    if exit_status:  # a scheduler (or torchrun) sees that the run did not finish
        raise SystemExit(exit_status)


if __name__ == "__main__":
    main(sys.argv[1:])
