"""
Train a bytecross model (or its plain-GPT baseline: streams=[]).

    python train.py config/cpu_demo.py                         # CPU, a few minutes
    python train.py config/bytes.py --max_iters=2000           # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/bytes.py   # DDP
    (add --nnodes etc. to torchrun for multi-node)

Config files are Python files that assign options; --key=value overrides them. Unknown keys are
errors. Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits with status
128 + the signal's number (130, 143): the run did not finish. --init_from=resume continues exactly
where it stopped (weights, optimizer, each process's RNG, data position, step); --init_from=auto
resumes when out_dir has a checkpoint.
"""
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import configurator
from checkpoint import (lock_out_dir, restore, resume_or_start, save_checkpoint, start_log,
                        unlock_out_dir)
from configurator import validate
from data import Corpus, DataError, batch_inputs, budgets, collate, make_batch, resegmented_window
from model import GPT, GPTConfig
from runtime import (Runtime, StopSignal, agree_to_stop, check_attention, compile_model,
                     end_processes, new_graph_step, own_kernel, processes, start_runtime)
from tokenizers import Tokenizer

DEFAULTS = dict(
    # data and output
    data_dir="data/shakespeare",   # made by prepare.py
    out_dir="out",
    init_from="scratch",           # 'scratch', 'resume' (out_dir/ckpt.pt), 'auto' (resume if any)
    # model (see model.py); the default is GPT-2 small whose every third layer reads its own bytes from a
    # 1 x 128 byte GPT, as config/bytes.py
    tokenizer="gpt2",
    block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    streams=[dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=128, window=256, budget=6144,
                  packed_budget=4096, cross_layers="every3", locality=0, shared_kv=True, parallel=True)],
    # optimization
    batch_size=16,                 # windows per micro-step per process
    total_batch_size=16 * 1024,    # tokens per optimizer step, over all processes and micro-steps
    max_iters=5000,
    learning_rate=6e-4, min_lr=6e-5, warmup_iters=200,  # linear warmup, then cosine decay to min_lr
    weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,   # grad_clip 0: no clipping
    # making tokens need their bytes (FINDINGS.md); both act in training only
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
                                   # fewer kernel launches for a host-bound step (FINDINGS.md)
    attention="auto",              # 'flex' (fused, GPU) or 'sdpa' (reference); 'auto': flex on CUDA
    pack="auto",                   # training packs side streams that have a packed_budget; 'auto':
                                   # with flex only (SDPA's dense masks grow with a row's square)
    own_kernel="auto",             # flex on a GPU, locality 0: tokens read their own elements by
                                   # kernels.py (Triton); 'auto': where flex runs on a GPU with
                                   # Triton; False: by gathers and scatter-adds (same function)
    chunked_windows=False,         # flex: side streams' sliding-window self-attention as one batched
                                   # SDPA over chunks of 64 elements instead of FlexAttention block
                                   # masks (the same function; off until timed on a GPU); SDPA
                                   # ignores it
    seed=1337,
)
MODEL_KEYS = ("tokenizer", "block_size", "n_layer", "n_head", "n_embd", "dropout", "streams")


def parse_config(argv):
    """DEFAULTS, then config files and --key=value overrides (configurator.py). Returns the config
    and the set of keys given explicitly."""
    return configurator.parse_config(argv, DEFAULTS)


def configure(argv):
    """The run's config (on resume: the checkpoint's, with what argv gives explicitly on top), the
    checkpoint or None, and {option: [checkpoint's, now]} for what changed. The first process
    locks out_dir."""
    master = processes()[1] == 0
    cfg, given = parse_config(argv)
    cfg, ckpt, changes = resume_or_start(cfg, given, DEFAULTS, MODEL_KEYS, master)
    validate(cfg)
    if master:
        lock_out_dir(cfg["out_dir"])
    return cfg, ckpt, changes


def print0(*args):
    """print, on the first process only"""
    if processes()[1] == 0:
        print(*args, flush=True)


# ---------------------------------------------------------------------------------------------
# setting up a run: tokenizers, data, model, optimizer


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
    train_batches: "Batches" = None
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
        print0("warning: flex attention without torch.compile runs an unfused, slow kernel")
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


def load_split(data_dir, split, main_tok, side_toks, T):
    try:
        corpus = Corpus.load(data_dir, split, main_tok, side_toks)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    if corpus.n_windows(T) == 0:
        raise SystemExit(f"error: the {split} split has {corpus.n_tokens} tokens, too few for "
                         f"block_size {T}")
    return corpus


def build_model(cfg, model_config, device, attention, rank=0):
    """The model and its optimizer (bench.py builds them here too, to time what trains). Each
    process seeds its own random stream (seed + rank), so that dropout masks differ between
    processes; DDP starts them all from rank 0's weights."""
    torch.manual_seed(cfg["seed"] + rank)
    model = GPT(model_config).to(device)
    model.attention = attention
    model.own_kernel = own_kernel(cfg["own_kernel"], attention, torch.device(device).type)
    model.chunked_windows = cfg["chunked_windows"] and attention == "flex"
    model.drop_embeddings = cfg["embed_dropout"] > 0
    check_attention(model_config, attention)
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"],
                                          (cfg["beta1"], cfg["beta2"]), torch.device(device).type,
                                          cfg["branch_lr_scale"])
    return model, optimizer


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
    print0("params: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    # the machine in the log too: runs summarised together may have trained on different ones
    where = rt.device
    if rt.device.startswith("cuda"):
        where += f" ({torch.cuda.get_device_name(rt.device)})"
    print0(f"flops/token {run.flops_per_token / 1e9:.2f} GFLOP | {rt.world} process(es) on "
           f"{where} | torch {torch.__version__} | {rt.dtype} | compile {rt.use_compile} | "
           f"attention {rt.attention}")
    bytes_per_token = data.n_bytes / data.n_tokens
    print0(f"data: train {data.n_tokens:,} tokens ({bytes_per_token:.2f} bytes/token), val "
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
# data: which windows each step trains on, and which ones evaluation scores


def packs(cfg, attention):
    """Whether training packs side streams: the pack key, 'auto' settled as with flex attention only
    (a dense SDPA mask over a packed row of B * packed_budget elements grows with its square)."""
    return cfg["pack"] if cfg["pack"] != "auto" else attention == "flex"


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


# ---------------------------------------------------------------------------------------------
# a training step: schedules, forward and backward, optimizer, the log line


def lr_at(it, cfg):
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / cfg["warmup_iters"]
    decay_iters = max(1, cfg["max_iters"] - cfg["warmup_iters"])
    progress = min(1.0, (it - cfg["warmup_iters"]) / decay_iters)
    lr, min_lr = cfg["learning_rate"], cfg["min_lr"]
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def embed_dropout_at(it, cfg):
    anneal = cfg["embed_dropout_anneal"] * cfg["max_iters"]
    return cfg["embed_dropout"] * (max(0.0, 1 - it / anneal) if anneal > 0 else 1.0)


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


def optimizer_step(model, optimizer, grad_clip):
    """Clip the gradients' norm (grad_clip 0: no clipping), step, and drop the gradients. Returns
    the norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


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


def si(x):
    """x with three significant digits and an SI prefix that suits its size: 0.0512 -> 51.2m,
    412e3 -> 412K"""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K"), (1, ""), (1e-3, "m")):
        if abs(x) >= scale:
            break
    return f"{x / scale:.3g}{prefix}"


def log_progress(run, meter, loss_sum, lr, grad_norm):
    """The line of a log step, printed and in log.jsonl."""
    cfg, step, side_toks = run.cfg, run.step, run.side_toks
    loss = loss_sum / run.accum
    if run.rt.ddp:  # the whole batch's loss, as one process logs it, not the first one's share
        dist.all_reduce(loss)
        loss = loss / run.rt.world
    loss = loss.item()  # waits for the device, so the timing below is real
    dt, dt_ahead = meter.lap(step)
    tok_s = cfg["total_batch_size"] / dt
    peak = run.rt.peak_flops
    mfu = f" | MFU {100 * run.flops_per_token * tok_s / (peak * run.rt.world):.1f}%" if peak else ""
    eta = (cfg["max_iters"] - step) * dt_ahead
    lost, dropped = meter.side_shares()
    side = "".join(f" | {t.name} lost {100 * f:.2f}% dropped {100 * d:.2f}%"
                   for t, f, d in zip(side_toks, lost, dropped))
    print0(f"step {step}/{cfg['max_iters']} | loss {loss:.4f} | lr {lr:.2e} | norm "
           f"{grad_norm:.2f} | {si(dt)}s | {si(tok_s)} tok/s{mfu}{side} | eta "
           f"{eta / 60:.1f}min")
    run.log(step=step, loss=loss, lr=lr, dt=dt, tok_s=tok_s, lost=lost.tolist(),
            dropped=dropped.tolist())


# ---------------------------------------------------------------------------------------------
# evaluation


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
    print0(f"step {run.step}: val loss {val_loss:.4f} | val bpb {val_bpb:.4f}")
    run.log(step=run.step, val_loss=val_loss, val_bpb=val_bpb)
    if run.step > run.ckpt_step and (run.cfg["ckpt_interval"] == 0 or last):
        save_checkpoint(run)


# ---------------------------------------------------------------------------------------------
# the run: set up, then train step by step, evaluating and checkpointing on the way


def main(argv):
    cfg, ckpt, changes = configure(argv)
    rt = start_runtime(cfg)
    run = set_up(cfg, rt, ckpt)
    del ckpt  # restored into the model and optimizer: free its memory
    stop = StopSignal(print0)
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
            print0(f"stopped at step {run.step}; continue with --init_from=resume (checkpoint "
                   f"{run.ckpt_path})")
            break
    prefetch.close()
    print0(f"done in {(time.time() - t_start) / 60:.1f} min; best val loss {run.best_val:.4f}")
    if run.log_file:
        run.log_file.close()
    unlock_out_dir()
    if rt.ddp:
        end_processes(exit_status)
    if exit_status:  # a scheduler (or torchrun) sees that the run did not finish
        raise SystemExit(exit_status)


if __name__ == "__main__":
    main(sys.argv[1:])
