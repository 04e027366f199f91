"""
A run's out_dir and its checkpoint. train.py locks out_dir, keeps log.jsonl there and writes
ckpt.pt; train.py (to resume), sample.py and evaluate.py read ckpt.pt back.

A checkpoint holds tensors and plain data only, and is read with torch.load(weights_only=True):
loading a file, even one from elsewhere, never runs code. It is written atomically: a crash or a
full disk leaves the previous one intact.
"""
import fcntl
import json
import os
from dataclasses import asdict

import torch
import torch.distributed as dist

from data import data_digest, write_atomic
from model import GPT, GPTConfig
from tokenizers import Tokenizer

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


def resume_or_start(cfg, given, defaults, model_keys, master):
    """Settle init_from, and on resume read the checkpoint: its config, with what is given
    explicitly on top (`defaults` for options added since). Returns (config, checkpoint or None,
    {option: [checkpoint's, now]} for what changed)."""
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
    diff = [k for k in model_keys if k != "dropout" and k in given and cfg[k] != saved.get(k)]
    if diff:
        raise SystemExit(f"error: the checkpoint in {cfg['out_dir']} has a different architecture ("
                         + "; ".join(f"{k}: {saved.get(k)!r} there, {cfg[k]!r} here" for k in diff)
                         + "): resume with its config, or train into another out_dir")
    changed = {k: [saved.get(k), cfg[k]] for k in sorted(given)
               if k not in ("init_from", "out_dir") and cfg[k] != saved.get(k)}
    cfg = {**defaults, **saved, **{k: cfg[k] for k in given},
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


def save_checkpoint(run):
    """A training run's state (train.Run) into its out_dir. Every process calls this (it gathers
    their random states); the first one writes the file."""
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


def restore(ckpt, run):
    """Weights, optimizer and this process's random state from a checkpoint into a training run
    (train.Run); returns (step, data position, best val loss)."""
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
    if rt.master and rt.world > len(rngs):
        print(f"note: the checkpoint holds the random states of {len(rngs)} process(es); the "
              f"others start new ones", flush=True)
    if rt.master:
        print(f"resumed from {path} at step {ckpt['step']}", flush=True)
    return ckpt["step"], ckpt["position"], ckpt["best_val_loss"]


def write_checkpoint(path, state):
    """torch.save through a temporary file: a crash or a full disk never leaves a half-written
    checkpoint, nor a stray .tmp."""
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


def read_checkpoint(path, keys, kind="checkpoint", hint=""):
    """A checkpoint's contents, which must hold `keys`; anything but tensors and plain data is
    refused with a SystemExit."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        for k in keys:
            ckpt[k]  # a KeyError or TypeError: not a checkpoint
    except Exception as e:
        if "Unsupported global" in str(e):  # weights_only met a class or function: may run code
            culprit = str(e).split("GLOBAL ")[-1].split()[0]
            raise SystemExit(f"error: {path} holds objects other than tensors and plain data "
                             f"({culprit}); refused, as loading them could run code") from None
        raise SystemExit(f"error: {path} is not a readable {kind} ({type(e).__name__}: {e}){hint}"
                         ) from None
    return ckpt


def load_checkpoint(path, device="cpu"):
    """A trained model from train.py's checkpoint (a file, or an out_dir holding ckpt.pt), in eval
    mode. Returns (model, checkpoint dict without the weights and optimizer)."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.exists(path):
        raise SystemExit(f"error: no checkpoint at {path}: "
                         "train one with train.py (it writes <out_dir>/ckpt.pt)")
    ckpt = read_checkpoint(path, ("model_config", "model"), "bytecross checkpoint")
    try:
        config = GPTConfig(**ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a readable bytecross checkpoint "
                         f"({type(e).__name__}: {e})") from None
    model = GPT(config)
    try:
        model.load_state_dict(ckpt.pop("model"))
    except RuntimeError as e:
        raise SystemExit(f"error: {path} does not fit this version of model.py: {str(e)[:500]}")
    ckpt.pop("optimizer", None)
    model.to(device).eval()
    return model, ckpt


def open_trained(path, device="cpu", tokenizers=None):
    """load_checkpoint, plus the model's tokenizers, each checked against the fingerprint it was
    trained with. Returns (model, main tokenizer, side tokenizers, checkpoint). `tokenizers`: a dict
    reused across calls (spec -> Tokenizer), so that several checkpoints share them."""
    model, ckpt = load_checkpoint(path, device)
    tokenizers = {} if tokenizers is None else tokenizers
    c = model.config
    for spec in [c.tokenizer] + [s.tokenizer for s in c.streams]:
        if spec not in tokenizers:
            tokenizers[spec] = Tokenizer(spec)
        tok = tokenizers[spec]
        trained = ckpt.get("tokenizers", {}).get(spec)
        if trained != tok.fingerprint:
            raise SystemExit(f"error: {path}: tokenizer {spec!r} here differs from the one the "
                             f"model was trained with (fingerprint {tok.fingerprint}, "
                             f"checkpoint {trained})")
    return model, tokenizers[c.tokenizer], [tokenizers[s.tokenizer] for s in c.streams], ckpt
