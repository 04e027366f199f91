"""
Training curves from train.py's log.jsonl: train/val loss and val bits-per-byte against step and
against wall-clock, several runs on one figure (PNG; needs matplotlib), and a summary table (needs
nothing).

    python -m lab.plot out-cpu-demo                        # the table; with matplotlib, out-cpu-demo/curves.png
    python -m lab.plot out-a out-b --out curves.png        # several runs on one figure
    python -m lab.plot out-a results/x/log.jsonl --table   # the table only (no matplotlib needed)

Wall-clock is training time as train.py measures it: every log line's dt (seconds per step since the
previous log line or evaluation) times those steps, summed. Evaluation and start-up are left out;
compilation (in the first interval after each start) is in. A resumed run continues its log from the
checkpoint's step; where an older log has a step twice (resumed from an earlier checkpoint), the
later values count.

study_plots draws a study's figures from its summary (lab/study.py).
"""
import argparse
import importlib.util
import json
import os
import re
import statistics


def load_run(path):
    """A run folder (or its log.jsonl) -> dict of name, train {step: (loss, seconds)},
    val {step: (val_loss, val_bpb, seconds)} and tokens per step; seconds: training time so far."""
    file = os.path.join(path, "log.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise SystemExit(f"error: {file} not found: give run folders written by train.py, "
                         "or their log.jsonl")
    train, val, seconds, last_step, tokens_per_step = {}, {}, 0.0, 0, None
    with open(file) as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash, or still being written
            try:
                step = int(r["step"])
                if "val_loss" in r:
                    val[step] = (float(r["val_loss"]), float(r["val_bpb"]), seconds)
                elif "loss" in r:
                    # dt covers the steps since the previous line; a step at or below it means the
                    # run was resumed from an earlier checkpoint and its log not cut back: count one
                    # step
                    seconds += float(r["dt"]) * (step - last_step if step > last_step else 1)
                    train[step] = (float(r["loss"]), seconds)
                    tokens_per_step = round(float(r["tok_s"]) * float(r["dt"]))
                elif not r.get("resumed"):
                    continue  # another kind of record: nothing to draw
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"error: {file} line {n} is not a train.py log line "
                                 f"({type(e).__name__}: {e})")
            last_step = step
    if not train and not val:
        raise SystemExit(f"error: {file} has no train.py log lines (yet)")
    # a run is named by its folder; another log file by folder and file
    # (results/x/log_b.jsonl -> x/log_b)
    folder, base = os.path.split(os.path.abspath(file))
    name = os.path.basename(folder)
    if base != "log.jsonl":
        name = os.path.join(name, base.removesuffix(".jsonl"))
    return dict(name=name, train=dict(sorted(train.items())), val=dict(sorted(val.items())),
                tokens_per_step=tokens_per_step)


def summary(run):
    """Steps, tokens, training seconds, final and best val numbers of one run."""
    steps = max([*run["train"], *run["val"]])
    seconds = max([s for _, s in run["train"].values()] + [s for *_, s in run["val"].values()])
    tokens = run["tokens_per_step"] and steps * run["tokens_per_step"]
    s = dict(steps=steps, tokens=tokens, seconds=seconds,
             final_loss=None, final_bpb=None, best_bpb=None, best_step=None)
    if run["val"]:
        last, best = max(run["val"]), min(run["val"], key=lambda k: run["val"][k][1])
        s.update(final_loss=run["val"][last][0], final_bpb=run["val"][last][1],
                 best_bpb=run["val"][best][1], best_step=best)
    return s


def duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def table(runs):
    rows = [("run", "steps", "tokens", "train time", "val loss", "val bpb", "best val bpb (step)")]
    num = lambda v: "-" if v is None else f"{v:.4f}"
    for run in runs:
        s = summary(run)
        tokens = "-" if s["tokens"] is None else f"{s['tokens']:,}"
        best = "-" if s["best_step"] is None else f"{s['best_bpb']:.4f} ({s['best_step']:,})"
        rows.append((run["name"], f"{s['steps']:,}", tokens, duration(s["seconds"]),
                     num(s["final_loss"]), num(s["final_bpb"]), best))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    # the run's name aligned left, the numbers right
    aligned = lambda row: [c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths))]
    return "\n".join("  ".join(aligned(row)) for row in rows)


def plot(runs, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plotting needs matplotlib (pip install matplotlib); "
                         "--table prints the summary without it")
    longest = max(summary(r)["seconds"] for r in runs)
    unit, scale = ("s", 1) if longest < 120 else ("min", 60) if longest < 7200 else ("h", 3600)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for run, color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(runs)):
        train = sorted(run["train"].items())
        val = sorted(run["val"].items())
        for row, x_of in ((0, lambda step, secs: step), (1, lambda step, secs: secs / scale)):
            loss_ax, bpb_ax = axes[row]
            train_x = [x_of(k, v[1]) for k, v in train]
            val_x = [x_of(k, v[2]) for k, v in val]
            loss_ax.plot(train_x, [v[0] for _, v in train], color=color, lw=0.8, alpha=0.45,
                         marker="." if len(train) == 1 else None, label=f"{run['name']} train")
            loss_ax.plot(val_x, [v[0] for _, v in val], "o-", color=color, ms=3,
                         label=f"{run['name']} val")
            bpb_ax.plot(val_x, [v[1] for _, v in val], "o-", color=color, ms=3, label=run["name"])
    for row, xlabel in ((0, "step"), (1, f"training time ({unit}; evaluation excluded)")):
        for col, ylabel in enumerate(("loss (nats per token)", "val bits per byte")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.set_ylim(zoom_past_start(axes[0][col]))  # by step: time can run unevenly
    axes[0][0].legend(fontsize=8)
    axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def zoom_past_start(ax):
    """y limits for lines against step. The first points (a loss near ln(vocabulary)) would flatten
    the rest: the limits span what the lines reach after the first 10% of the steps; the start is
    cut off."""
    lines = [(list(l.get_xdata()), list(l.get_ydata()))
             for l in ax.get_lines() if len(l.get_xdata())]
    if not lines:
        return None
    x_lo, x_hi = min(min(x) for x, _ in lines), max(max(x) for x, _ in lines)
    later = [v for x, y in lines for u, v in zip(x, y) if u >= x_lo + 0.1 * (x_hi - x_lo)]
    all_y = [y for _, ys in lines for y in ys]
    low, top = min(all_y), max(later or all_y)
    margin = 0.05 * (top - low) or 0.1
    return low - margin, top + margin


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m lab.plot",
        description="Loss and bits-per-byte curves of train.py runs, and a summary.")
    p.add_argument("runs", nargs="+", help="run folders (out_dir of train.py) or log.jsonl files")
    p.add_argument("--out", help="PNG to write (default: curves.png in the first run's folder, "
                                 "where matplotlib is installed)")
    p.add_argument("--table", action="store_true", help="print the summary table only, no plot")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.runs[0] if os.path.isdir(args.runs[0])
                                   else os.path.dirname(args.runs[0]), "curves.png")
    if not out.lower().endswith(".png"):
        raise SystemExit(f"error: --out {out} should end in .png")
    runs = [load_run(path) for path in args.runs]
    print(table(runs))
    if args.table:
        return
    if not args.out and importlib.util.find_spec("matplotlib") is None:
        # the quickstart's summary: the table is what was asked for, the figure an optional extra
        return print("note: matplotlib is not installed, so no curves.png (pip install matplotlib)")
    plot(runs, out)
    print(f"wrote {out}")



# ------------------------------------------------------------------------------------------------
# a study's figures, from its summary (lab/study.py)

NOISE = re.compile(r"^(noise|segmentation)(2?)\.(kinds|rates)\.(.+)\.delta$")
TASKS = re.compile(r"^(tasks|task_groups\.[^.]+)\.([^.]+)\.acc$")


def study_plots(out, arms, curves):
    """A study's figures (lab/study.py): curves.png, noise.png and tasks.png in out."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return print("note: matplotlib is not installed: no plots (pip install matplotlib)")
    curve_plot(plt, out, curves)
    bar_plots(plt, out, arms)
    print(f"wrote the plots to {out}")


def curve_plot(plt, out, curves):
    """curves.png: val bpb against tokens and against training time, per arm."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    # mean over seeds at the steps all seeds evaluated, step 0 left out
    for arm, by_seed in curves.items():
        steps = sorted(set.intersection(*(set(c) for c in by_seed.values())) - {0})
        mean = lambda i, scale: [statistics.fmean(c[s][i] for c in by_seed.values()) / scale
                                 for s in steps]
        for ax, (i, scale) in zip(axes, ((0, 1e6), (1, 60))):
            ax.plot(mean(i, scale), mean(2, 1), marker=".", label=arm)
    for ax, x in zip(axes, ("tokens (M)", "training time (min; compilation in, evaluation out)")):
        ax.set(xlabel=x, ylabel="val bits/byte (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=120)


def bar_plots(plt, out, arms):
    """noise.png and tasks.png: a bar per arm and metric, a panel per domain or word group."""
    noise_panel = lambda m: ("second domain (--text2)" if m[2] else "in domain",
                             ("seg " if m[3] == "rates" else "") + m[4])
    task_panel = lambda m: ("held-out words" if m[1] == "tasks" else m[1].split(".")[1] + " words",
                            m[2])
    figures = (("noise.png", NOISE, noise_panel, "Δ bits/byte after noise"),
               ("tasks.png", TASKS, task_panel, "accuracy"))
    for file, pattern, panel, ylabel in figures:
        panels = {}  # title -> {x label: metric}
        for name in dict.fromkeys(n for e in arms.values() for n in e):
            if pattern.match(name):
                title, x = panel(pattern.match(name))
                panels.setdefault(title, {})[x] = name
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(13, 4 * len(panels)), squeeze=False)
        width = 0.8 / len(arms)
        one_seed = all(len(e["seeds"]) == 1 for e in arms.values())  # no spread to show
        for ax, (title, names) in zip(axes[:, 0], panels.items()):
            for i, (arm, e) in enumerate(arms.items()):
                ms = [e.get(n, {}) for n in names.values()]
                ax.bar([k + i * width for k in range(len(names))], [m.get("mean") or 0 for m in ms],
                       width, yerr=None if one_seed else [m.get("sd") or 0 for m in ms],
                       capsize=2, label=arm)
            ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], list(names))
            ax.set(title=title, ylabel=ylabel + (" (one seed)" if one_seed
                                                 else " (mean ± sd over seeds)"))
            ax.grid(axis="y", alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, file), dpi=120)


if __name__ == "__main__":
    main()
