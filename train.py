"""
Train a bytecross model (or its plain-GPT baseline: streams=[]).

    python train.py config/cpu_demo.py                         # CPU, a few minutes
    python train.py config/gpt2_bytes.py --max_iters=2000      # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2_bytes.py   # DDP (add --nnodes etc. for multi-node)

Config files are Python files that assign options; --key=value overrides them. Unknown keys are errors.
Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits; --init_from=resume continues
exactly where it stopped (weights, optimizer, RNG, data position, step).
"""
import ast
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist

from data import Corpus, DataError, Tokenizer, collate
from model import GPT, GPTConfig, batch_inputs

DEFAULTS = dict(
    # data and output
    data_dir="data/shakespeare",   # made by prepare.py
    out_dir="out",
    init_from="scratch",           # 'scratch' or 'resume' (from out_dir/ckpt.pt)
    # model (see model.py); the default is GPT-2 with a byte branch read by main layer 0
    tokenizer="gpt2",
    block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    streams=[dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=256, window=256, budget=6144,
                  cross_layers=[0], locality=None)],
    # optimization
    batch_size=16,                 # windows per micro-step per process
    total_batch_size=16 * 1024,    # tokens per optimizer step, over all processes and micro-steps
    max_iters=5000,
    learning_rate=6e-4, min_lr=6e-5, warmup_iters=200,   # linear warmup, then cosine decay to min_lr
    weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    # evaluation, logging, checkpoints
    eval_interval=250, eval_iters=20, log_interval=10, ckpt_interval=0,  # 0: checkpoint at each eval
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
               str: lambda v: isinstance(v, (str, bool)),  # 'auto' options also take True/False
               list: lambda v: isinstance(v, (list, tuple))}

    def set_key(key, value, where):
        if key not in DEFAULTS:
            raise SystemExit(f"error: unknown config key {key!r} ({where}). Valid keys:\n  "
                             + ", ".join(sorted(DEFAULTS)))
        kind = type(DEFAULTS[key])
        if not accepts[kind](value):
            raise SystemExit(f"error: {key}={value!r} ({where}) should be {kind.__name__}")
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
            set_key(key, value, "command line")
        else:
            if not os.path.exists(arg):
                raise SystemExit(f"error: config file {arg} not found")
            scope = {}
            exec(open(arg).read(), scope)
            for key, value in scope.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    set_key(key, value, arg)
    return cfg, given


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
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
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


def lr_at(it, cfg):
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / cfg["warmup_iters"]
    progress = min(1.0, (it - cfg["warmup_iters"]) / max(1, cfg["max_iters"] - cfg["warmup_iters"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])


class Batches:
    """Deterministic windows: each epoch is a seeded permutation of the corpus' non-overlapping windows.
    A step's windows follow from the global position alone, which makes resume exact and gives every
    process count the same global batch."""

    def __init__(self, corpus, T, streams, seed, pin=False):
        self.corpus, self.T, self.streams, self.seed, self.pin = corpus, T, streams, seed, pin
        self.n = corpus.n_windows(T)
        self._perm = (None, None)

    def window_ids(self, start, count):
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.n)
            if self._perm[0] != epoch:
                self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
            out.append(int(self._perm[1][i]))
        return out

    def get(self, window_ids):
        return collate([self.corpus.window(w * self.T, self.T, self.streams) for w in window_ids], self.pin)


def main(argv):
    cfg, given = parse_config(argv)
    # ---- processes and devices
    ddp = "RANK" in os.environ
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    device, device_type, dtype, use_compile, attention = runtime(cfg)
    if ddp and device_type == "cuda":
        device = f"cuda:{local_rank}"
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        if device_type == "cuda":
            torch.cuda.set_device(device)
    master = rank == 0
    print0 = lambda *a, **k: master and print(*a, **k, flush=True)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---- resume: the checkpoint's config, with what the command line gives explicitly on top
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    ckpt = None
    if cfg["init_from"] == "resume":
        if not os.path.exists(ckpt_path):
            raise SystemExit(f"error: --init_from=resume but {ckpt_path} does not exist")
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            ckpt["config"], ckpt["model"], ckpt["optimizer"]
        except Exception as e:
            raise SystemExit(f"error: {ckpt_path} is not a readable checkpoint ({type(e).__name__}: {e}); "
                             f"start afresh in another out_dir")
        diff = [k for k in MODEL_KEYS if k in given and cfg[k] != ckpt["config"][k]]
        if diff:
            raise SystemExit(f"error: the checkpoint in {cfg['out_dir']} has a different architecture ("
                             + "; ".join(f"{k}: {ckpt['config'][k]!r} there, {cfg[k]!r} here" for k in diff)
                             + "): resume with its config, or train into another out_dir")
        cfg = {**ckpt["config"], **{k: cfg[k] for k in given}}
    elif cfg["init_from"] != "scratch":
        raise SystemExit("error: init_from must be 'scratch' or 'resume'")
    elif os.path.exists(ckpt_path):
        raise SystemExit(f"error: {ckpt_path} exists. Continue it with --init_from=resume, or pick another "
                         f"--out_dir (or delete it) to start afresh")

    # ---- tokenizers, data, model
    main_tok, side_toks, model_config = model_setup(cfg)
    budgets = [(t, s.budget) for t, s in zip(side_toks, model_config.streams)]
    try:
        train_data = Corpus.load(cfg["data_dir"], "train", main_tok, side_toks)
        val_data = Corpus.load(cfg["data_dir"], "val", main_tok, side_toks)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    T = cfg["block_size"]
    for name, c in (("train", train_data), ("val", val_data)):
        if c.n_windows(T) == 0:
            raise SystemExit(f"error: the {name} split has {c.n_tokens} tokens, too few for block_size {T}")
    B = cfg["batch_size"]
    per_step = B * T * world
    if cfg["total_batch_size"] % per_step:
        raise SystemExit(f"error: total_batch_size {cfg['total_batch_size']} is not a multiple of "
                         f"batch_size * block_size * processes = {per_step}")
    accum = cfg["total_batch_size"] // per_step
    torch.manual_seed(cfg["seed"] + rank)
    model = GPT(model_config).to(device)
    model.attention = attention
    check_attention(model_config, attention)
    if attention == "flex" and not use_compile:
        print0("warning: flex attention without torch.compile runs an unfused, slow kernel")
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"],
                                          (cfg["beta1"], cfg["beta2"]), device_type)
    step, position, best_val = 0, 0, float("inf")
    if ckpt is not None:
        changed = [t.spec for t in [main_tok] + side_toks if ckpt["tokenizers"].get(t.spec) != t.fingerprint]
        if changed:
            raise SystemExit(f"error: tokenizer(s) {changed} differ from those the checkpoint was trained with")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise SystemExit(f"error: {ckpt_path} does not fit this model.py: {str(e)[:500]}")
        step, position, best_val = ckpt["step"], ckpt["position"], ckpt["best_val_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device_type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        print0(f"resumed from {ckpt_path} at step {step}")
        del ckpt
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)

    counts = raw_model.param_counts()
    flops_per_token = raw_model.flops_per_token()
    print0("params: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    print0(f"flops/token {flops_per_token / 1e9:.2f} GFLOP | {world} process(es) on {device} | {dtype} | "
           f"compile {use_compile} | attention {attention}")
    print0(f"data: train {train_data.n_tokens:,} tokens ({train_data.n_bytes / train_data.n_tokens:.2f} bytes/token), "
           f"val {val_data.n_tokens:,} | batch {cfg['total_batch_size']:,} tokens = {B} x {T} x {world} proc x {accum} accum")
    peak = next((v for k, v in PEAK_FLOPS.items() if device_type == "cuda" and k in torch.cuda.get_device_name()), None)

    train_batches = Batches(train_data, T, budgets, cfg["seed"], pin=device_type == "cuda")
    # validation: the same evenly spaced windows every time, shared out between processes
    val_ids = np.linspace(0, val_data.n_windows(T) - 1, cfg["eval_iters"] * B * world).astype(int).tolist()
    val_batches = Batches(val_data, T, budgets, cfg["seed"])

    @torch.no_grad()
    def evaluate():
        model.eval()
        sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, tokens, loss sum on text, bytes
        mine = val_ids[rank::world]
        for i in range(0, len(mine), B):
            batch = val_batches.get(mine[i:i + B])
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

    def save_checkpoint():
        if not master:
            return
        os.makedirs(cfg["out_dir"], exist_ok=True)
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "config": cfg,
                 "model_config": asdict(model_config), "step": step, "position": position,
                 "best_val_loss": best_val,
                 "tokenizers": {t.spec: t.fingerprint for t in [main_tok] + side_toks},
                 "rng": {"torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}}
        torch.save(state, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)  # atomic: a crash never leaves a half-written checkpoint

    stop = {"requested": False}

    def on_signal(signum, frame):
        if stop["requested"]:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: leave now
            return  # a job's SIGTERM can come twice (sent to every process, and forwarded by torchrun)
        stop["requested"] = True
        print0(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def micro_batches(pos):
        """This process's share of one optimizer step: accum micro-batches of B windows."""
        return [train_batches.window_ids(pos + (m * world + rank) * B, B) for m in range(accum)]

    if master and cfg["init_from"] == "scratch":
        os.makedirs(cfg["out_dir"], exist_ok=True)
        open(os.path.join(cfg["out_dir"], "log.jsonl"), "w").close()
    log_file = open(os.path.join(cfg["out_dir"], "log.jsonl"), "a") if master else None
    log = lambda **kv: log_file and (log_file.write(json.dumps(kv) + "\n"), log_file.flush())
    prefetch = ThreadPoolExecutor(1)
    fetch = lambda pos: prefetch.submit(lambda: [train_batches.get(w) for w in micro_batches(pos)])
    pending = fetch(position)
    lost, seen = np.zeros(len(budgets)), 0
    t_start = time.time()
    timed_steps, timed_s, t_log, step_log = 0, 0.0, time.time(), step
    while True:
        last = step >= cfg["max_iters"]
        if step % cfg["eval_interval"] == 0 or last:
            val_loss, val_bpb = evaluate()
            best_val = min(best_val, val_loss)
            print0(f"step {step}: val loss {val_loss:.4f} | val bpb {val_bpb:.4f}")
            log(step=step, val_loss=val_loss, val_bpb=val_bpb)
            if step > 0 and (cfg["ckpt_interval"] == 0 or last):
                save_checkpoint()
            t_log, step_log = time.time(), step  # evaluation time stays out of the speed numbers
        if last:
            break
        if cfg["ckpt_interval"] and step > 0 and step % cfg["ckpt_interval"] == 0:
            save_checkpoint()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = pending.result()
        position += B * accum * world
        pending = fetch(position)
        loss_sum = 0.0
        for m, batch in enumerate(batches):
            inputs = batch_inputs(batch, device)
            lost += batch["lost"].sum(0).numpy()
            seen += batch["idx"].numel()
            # DDP: all-reduce gradients only after the last micro-step
            with (model.no_sync() if ddp and m < accum - 1 else nullcontext()):
                with autocast:
                    _, loss = model(**inputs)
                (loss / accum).backward()
            loss_sum = loss_sum + loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stopping = stop["requested"]
        if ddp:  # every process stops at the same step
            flag = torch.tensor(float(stopping), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopping = bool(flag.item())
        if step % cfg["log_interval"] == 0 or stopping or step == cfg["max_iters"]:
            loss_val = (loss_sum / accum).item()  # waits for the device, so the timing below is real
            dt = (time.time() - t_log) / (step - step_log)
            if step_log > 0 or step > cfg["log_interval"]:  # the first interval includes compilation
                timed_steps, timed_s = timed_steps + step - step_log, timed_s + dt * (step - step_log)
            t_log, step_log = time.time(), step
            tok_s = cfg["total_batch_size"] / dt
            mfu = f" | MFU {100 * flops_per_token * tok_s / (peak * world):.1f}%" if peak else ""
            eta = (cfg["max_iters"] - step) * (timed_s / timed_steps if timed_steps else dt)
            lost_frac = lost / max(seen, 1)
            lost_str = "".join(f" | {t.name} lost {100 * f:.2f}%" for t, f in zip(side_toks, lost_frac))
            print0(f"step {step}/{cfg['max_iters']} | loss {loss_val:.4f} | lr {lr:.2e} | norm {grad_norm:.2f} | "
                   f"{dt * 1000:.0f}ms | {tok_s / 1e3:.1f}K tok/s{mfu}{lost_str} | eta {eta / 60:.1f}min")
            log(step=step, loss=loss_val, lr=lr, dt=dt, tok_s=tok_s, lost=lost_frac.tolist())
            lost[:], seen = 0, 0
        if stopping:
            save_checkpoint()
            print0(f"stopped at step {step}; continue with --init_from=resume (checkpoint {ckpt_path})")
            break
    prefetch.shutdown(cancel_futures=True)
    print0(f"done in {(time.time() - t_start) / 60:.1f} min; best val loss {best_val:.4f}")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
