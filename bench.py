"""
Time training steps of one or more configs, without the data pipeline: forward, backward and
optimizer step on one real batch of batch_size windows from data_dir, compiled as train.py compiles
it.

    python bench.py config/baseline.py config/bytes.py config/cl100k_side.py --steps=30
    python bench.py config/bytes.py --batch_size=16      # --key=value applies to every config
    # nanoGPT's 124M timed first, as "anchor":
    python bench.py config/baseline.py config/bytes.py \\
        --anchor=../shared/anchors/nanogpt_bench.py --json=results/speed_h200.json
    # + prof/bytes.txt: time per kernel, and all kernels summed by kind against the step
    python bench.py config/bytes.py --profile=prof

This is how the README measures what each side stream costs: train.py's tokens/s also includes data
loading and evaluation. Prints a markdown table; --json=FILE also writes it as JSON, with every
row's settings and the sha256 of the code that ran (a copy of the tree whose git metadata is stale or
missing is still named by its files).
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch

from data import Corpus, DataError, batch_inputs, useful_counts
from runtime import compile_model, new_graph_step, peak_flops, resolve
from train import Batches, build_model, model_setup, optimizer_step, packs, parse_config


# kernel (CUDA) or operator (CPU) names by what they compute; the first match wins, so the loss and
# attention come before the generic compiled-elementwise rule
KINDS = [("matmul", r"nvjet|gemm|cutlass|cublas|splitKreduce|^aten::(mm|addmm|bmm|_addmm_activation)$"
                    r"|triton_tem_fused_(add)?mm"),
         ("attention", r"flash|fmha|sdpa|cudnn|flex_attention|scaled_dot_product"
                       r"|_own_(fwd|bwd)|own_attention"),  # the last two: kernels.py
         ("loss (log-softmax)", r"log_softmax|nll_loss|cross_entropy"),
         ("optimizer", r"multi_tensor|adam"),
         ("elementwise (compiled)", r"^triton_"),
         ("copies and fills", r"Memcpy|Memset|fill|copy|zero"),
         ("other", r"")]


def kind_of(name):
    return next(kind for kind, pattern in KINDS if re.search(pattern, name))


def by_kind(times, steps, step_ms):
    """Markdown: self time a step of every kernel, by kind, against the timed step; the gap to the
    timed step is time the GPU sat idle (or, on the CPU, framework overhead outside operators)."""
    groups = {}
    for name, us in times:
        kind = kind_of(name)
        groups[kind] = groups.get(kind, 0.0) + us / 1000 / steps
    total = sum(groups.values())
    lines = [f"| kind ({len(times)} names) | ms a step | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.0f}% |"
              for k, v in sorted(groups.items(), key=lambda kv: -kv[1])]
    lines += [f"| all | {total:.2f} | 100% |", f"| timed step (median, no profiler) | {step_ms:.2f} | |",
              f"| step minus all: idle or outside these | {step_ms - total:.2f} | |"]
    return "\n".join(lines)


def self_times(events, cuda):
    """(name, self time in us) of what ran: on the GPU its kernels only (operators would count their
    kernels twice, and a GPU-side annotation such as Optimizer.step spans kernels already counted),
    on the CPU every operator's self time."""
    if cuda:
        return [(e.key, e.self_device_time_total) for e in events
                if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation
                and e.self_device_time_total > 0]
    return [(e.key, e.self_cpu_time_total) for e in events if e.self_cpu_time_total > 0]


def profile(step, path, step_ms, steps=5):
    """torch.profiler over a few warm steps: every kernel and operator by the time it took, as a
    table in `path`, then the kernels summed by kind."""
    from torch.profiler import ProfilerActivity, profile as profiler
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler(activities=activities, acc_events=True) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    times = self_times(events, cuda)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    with open(path, "w") as f:
        f.write(f"{steps} steps; times are totals over them\n")
        # every row, names nearly whole: compiled kernels are named after the operations they fuse
        f.write(events.table(sort_by=sort, row_limit=-1, max_name_column_width=160))
        f.write(f"\n\n{'Kernels' if cuda else 'Operators (CPU)'}, all of them, by kind:\n\n")
        f.write(by_kind(times, steps, step_ms) + "\n")


def bench(cfg, steps, profile_path=""):
    device, device_type, dtype, use_compile, attention = resolve(cfg)
    cuda = device_type == "cuda"
    main_tok, side_toks, model_config = model_setup(cfg)
    try:
        corpus = Corpus.load(cfg["data_dir"], "train", main_tok, side_toks)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    B, T = cfg["batch_size"], cfg["block_size"]
    batches = Batches(corpus, T, main_tok, side_toks, model_config.streams, cfg["seed"],
                      pack=packs(cfg, attention))
    if batches.n < B:
        raise SystemExit(f"error: {cfg['data_dir']} holds {batches.n} windows of {T} tokens, "
                         f"fewer than batch_size {B}")
    batch = batches.get(batches.positions(0, B))
    inputs = batch_inputs(batch, device)
    model, optimizer = build_model(cfg, model_config, device, attention)
    flops = model.flops_per_token()  # what the hardware computes (padding included)
    useful = model.flops_per_token(useful_counts(batch)) if model_config.streams else flops
    step_model = compile_model(model, cfg["compile_mode"]) if use_compile else model
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        new_graph_step(cfg["compile_mode"])
        with autocast:
            _, loss = step_model(**inputs)
        loss.backward()
        optimizer_step(model, optimizer, cfg["grad_clip"])
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
    final_loss = loss.item()  # read before any further step (CUDA graphs reuse output memory)
    # the same steps back to back, one sync at the end, as train.py runs them: the host may run
    # ahead of the GPU, so host work at a step's start is hidden here and exposed above
    t = time.time()
    for _ in range(steps):
        step()
    sync()
    pipelined = (time.time() - t) / steps
    dt = float(np.median(times))
    if profile_path:
        profile(step, profile_path, 1000 * dt)
    peak = peak_flops(device)
    return dict(params=sum(p.numel() for p in model.parameters()), gflop_per_token=flops / 1e9,
                tokens=B * T, ms=1000 * dt, ms_min=1000 * min(times), tok_s=B * T / dt,
                ms_pipelined=1000 * pipelined,
                mfu=flops * B * T / dt / peak if peak else None,
                useful_mfu=useful * B * T / dt / peak if peak else None, warmup_s=warmup_s,
                memory_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                loss=final_loss, attention=attention, compile=use_compile,
                compile_mode=cfg["compile_mode"] if use_compile else None, dtype=dtype)


def run_anchor(path, steps, batch_size):
    """The speed anchor (nanoGPT's 124M, timed by its own script the way bench() times a config), in
    a process of its own, so that its model and compile caches stay out of ours. Its last output
    line is a JSON row."""
    r = subprocess.run([sys.executable, path, f"--steps={steps}", f"--batch_size={batch_size}"],
                       capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        output = (r.stdout + r.stderr)[-2000:]
        raise SystemExit(f"error: the anchor {path} printed no JSON row:\n{output}")


def table(rows, anchor):
    """Markdown: every row, and its step time against the first config's (and the anchor's)."""
    base = next((r["ms"] for r in rows if "ms" in r), None)
    vs_anchor = " | vs anchor" if anchor else ""
    header = (f"| config | params | GFLOP/token | ms/step | vs first{vs_anchor} | tokens/s | MFU "
              "| useful MFU | memory | warm-up |")
    lines = [header, "|---" * (10 + bool(anchor)) + "|"]
    percent = lambda v: f"{100 * v:.1f}%" if v else "-"
    if anchor:
        lines.append(f"| {anchor['config']} | {anchor['params'] / 1e6:.1f}M | - | "
                     f"{anchor['ms']:.1f} | - | 1.000x | {anchor['tok_s'] / 1e3:.1f}K | "
                     f"{percent(anchor['mfu'])} | - | - | {anchor['warmup_s']:.0f} s |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} |")
            continue
        mem = f"{r['memory_gb']:.1f} GB" if r["memory_gb"] else "-"
        ratio = f" | {r['ms'] / anchor['ms']:.3f}x" if anchor else ""
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['gflop_per_token']:.2f} | "
                     f"{r['ms']:.1f} | {r['ms'] / base:.3f}x{ratio} | {r['tok_s'] / 1e3:.1f}K | "
                     f"{percent(r['mfu'])} | {percent(r['useful_mfu'])} | {mem} | "
                     f"{r['warmup_s']:.0f} s |")
    return "\n".join(lines)


def code_hashes():
    """The first 12 hex digits of the sha256 of each module a step runs, by file name."""
    here = os.path.dirname(os.path.abspath(__file__))
    hashes = {}
    for name in ("model.py", "attention.py", "kernels.py", "train.py", "data.py", "tokenizers.py",
                 "runtime.py", "bench.py"):
        with open(os.path.join(here, name), "rb") as f:
            hashes[name] = hashlib.sha256(f.read()).hexdigest()[:12]
    return hashes


def main(argv):
    configs = [a for a in argv if not a.startswith("--")]
    options = [a for a in argv if a.startswith("--")]
    extra = {"steps": 20, "json": "", "anchor": "", "profile": ""}
    for a in list(options):
        key, _, value = a[2:].partition("=")
        if key in extra:
            extra[key] = type(extra[key])(value)
            options.remove(a)
    if not configs:
        raise SystemExit(__doc__)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{where} | torch {torch.__version__} | "
          f"median of {extra['steps']} steps after 3 warm-up steps", flush=True)
    anchor = None
    if extra["anchor"]:
        batch_size = parse_config([configs[0]] + options)[0]["batch_size"]
        anchor = run_anchor(extra["anchor"], extra["steps"], batch_size)
        print(f"anchor: {anchor['ms']:.1f} ms/step, {anchor['tok_s'] / 1e3:.0f}K tok/s", flush=True)
    if extra["profile"]:
        os.makedirs(extra["profile"], exist_ok=True)
    rows, code = [], code_hashes()
    for path in configs:
        cfg, _ = parse_config([path] + options)
        name = os.path.basename(path)[:-3]
        profile_file = extra["profile"] and os.path.join(extra["profile"], name + ".txt")
        try:
            r = bench(cfg, extra["steps"], profile_file)
            print(f"{path}: {r['ms']:.1f} ms/step, {r['tok_s'] / 1e3:.0f}K tok/s "
                  f"(warm-up {r['warmup_s']:.0f}s; back to back {r['ms_pipelined']:.1f} ms/step)",
                  flush=True)
        except Exception as e:
            # one config that fails (out of memory, a compiler error) spoils no other row; the
            # table keeps one line per config
            first_line = (str(e).strip().splitlines() or [""])[0]
            r = dict(error=f"{type(e).__name__}: {first_line[:300]}")
            print(f"{path}: failed ({r['error']})", flush=True)
        rows.append(dict(config=path, **r, settings=cfg))
        torch._dynamo.reset()  # each config compiles afresh
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if extra["json"]:  # after every row: a run cut short keeps what it measured
            with open(extra["json"], "w") as f:
                report = dict(device=where, torch=torch.__version__, steps=extra["steps"],
                              code=code, rows=rows, anchor=anchor)
                json.dump(report, f, indent=1)
    print("\n" + table(rows, anchor))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
