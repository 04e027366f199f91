"""
Time training steps of one or more configs, without the data pipeline: forward, backward and optimizer step
on one real batch of batch_size windows from data_dir, compiled as train.py compiles it.

    python bench.py config/gpt2_baseline.py config/gpt2_bytes.py config/gpt2_cl100k.py --steps=30
    python bench.py config/gpt2_bytes.py --batch_size=16      # --key=value applies to every config

This is how the README measures what each side stream costs: train.py's tokens/s also includes data loading
and evaluation. Prints a markdown table; --json=FILE also writes it as JSON.
"""
import json
import sys
import time

import numpy as np
import torch

from data import Corpus, DataError, useful_counts
from model import GPT, batch_inputs
from train import PEAK_FLOPS, Batches, check_attention, model_setup, parse_config, runtime


def bench(cfg, steps):
    device, device_type, dtype, use_compile, attention = runtime(cfg)
    cuda = device_type == "cuda"
    main_tok, side_toks, model_config = model_setup(cfg)
    try:
        corpus = Corpus.load(cfg["data_dir"], "train", main_tok, side_toks)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    B, T = cfg["batch_size"], cfg["block_size"]
    batches = Batches(corpus, T, main_tok, side_toks, model_config.streams, cfg["seed"], pack=True)
    if batches.n < B:
        raise SystemExit(f"error: {cfg['data_dir']} holds {batches.n} windows of {T} tokens, fewer than batch_size {B}")
    batch = batches.get(batches.positions(0, B))
    inputs = batch_inputs(batch, device)
    torch.manual_seed(cfg["seed"])
    model = GPT(model_config).to(device)
    model.attention = attention
    check_attention(model_config, attention)
    flops = model.flops_per_token()  # what the hardware computes (padding included)
    useful = model.flops_per_token(useful_counts(batch)) if model_config.streams else flops
    optimizer = model.configure_optimizer(cfg["weight_decay"], cfg["learning_rate"], (cfg["beta1"], cfg["beta2"]),
                                          device_type)
    step_model = torch.compile(model) if use_compile else model
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        with autocast:
            _, loss = step_model(**inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t0 = time.time()
    for _ in range(3):  # compilation, autotuning, allocator warm-up
        step()
    sync()
    warmup_s = time.time() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.time()
        loss = step()
        sync()
        times.append(time.time() - t)
    dt = float(np.median(times))
    peak = next((v for k, v in PEAK_FLOPS.items() if cuda and k in torch.cuda.get_device_name()), None)
    return dict(params=sum(p.numel() for p in model.parameters()), gflop_per_token=flops / 1e9,
                tokens=B * T, ms=1000 * dt, ms_min=1000 * min(times), tok_s=B * T / dt,
                mfu=flops * B * T / dt / peak if peak else None,
                useful_mfu=useful * B * T / dt / peak if peak else None, warmup_s=warmup_s,
                memory_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                loss=loss.item(), attention=attention, compile=use_compile, dtype=dtype)


def main(argv):
    configs = [a for a in argv if not a.startswith("--")]
    options = [a for a in argv if a.startswith("--")]
    extra = {"steps": 20, "json": ""}
    for a in list(options):
        key, _, value = a[2:].partition("=")
        if key in extra:
            extra[key] = type(extra[key])(value)
            options.remove(a)
    if not configs:
        raise SystemExit(__doc__)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{where} | torch {torch.__version__} | median of {extra['steps']} steps after 3 warm-up steps", flush=True)
    rows = []
    for path in configs:
        cfg, _ = parse_config([path] + options)
        r = bench(cfg, extra["steps"])
        rows.append(dict(config=path, **r))
        print(f"{path}: {r['ms']:.1f} ms/step, {r['tok_s'] / 1e3:.0f}K tok/s (warm-up {r['warmup_s']:.0f}s)", flush=True)
        torch._dynamo.reset()  # each config compiles afresh
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    base = rows[0]["ms"]
    print("\n| config | params | GFLOP/token | ms/step | vs first | tokens/s | MFU | useful MFU | memory | warm-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    percent = lambda v: f"{100 * v:.1f}%" if v else "-"
    for r in rows:
        mem = f"{r['memory_gb']:.1f} GB" if r["memory_gb"] else "-"
        print(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['gflop_per_token']:.2f} | {r['ms']:.1f} | "
              f"{r['ms'] / base:.3f}x | {r['tok_s'] / 1e3:.1f}K | {percent(r['mfu'])} | {percent(r['useful_mfu'])} | "
              f"{mem} | {r['warmup_s']:.0f} s |")
    if extra["json"]:
        with open(extra["json"], "w") as f:
            json.dump(dict(device=where, torch=torch.__version__, steps=extra["steps"], rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
