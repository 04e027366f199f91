"""
A seeded study: train arm configs x seeds at once on one machine, evaluate every run with
evaluate.py, and summarise: mean ± sd over seeds per arm and metric, the paired difference (same
seed) to the baseline arm with a 95% t-interval, and plots.

    python -m lab.study config/study/*.py --seeds=3 --out=results/study --text2=wikipedia/val.jsonl.xz
    # the plan; nothing runs:
    python -m lab.study config/study/*.py --max_iters=100 --parallel=4 --dry_run

An arm is a train.py config file, named by its file name. Run ARM_sS is `train.py ARM --seed=S
--out_dir=OUT/runs/ARM_sS` (output: train.log there). evaluate.py then scores every run on the arms'
data_dir, and with --text2 on a second domain too (RUN/eval.json).
The same command again skips finished runs and evaluations and resumes interrupted runs; a run
kept without its checkpoint (results copied without *.pt) counts as finished once its log.jsonl
reached its steps and it has an eval.json.
An arm that sets `_match_time_of = "OTHER"` is matched in wall-clock to arm OTHER: it trains for
OTHER's steps (OTHER may itself be matched) scaled by OTHER's step time over its own, both measured
alone by bench.py before training and kept in OUT/time_match.json (delete it to measure again).
Writes OUT/summary.json, OUT/summary.md and, with matplotlib, OUT/curves.png, noise.png and
tasks.png.
"""
import argparse
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

import torch

import train
from configurator import read_config_file
from data import write_atomic
from lab.plot import study_plots
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
PROGRESS_S = 30  # seconds between progress lines
OOM_RETRIES = 2  # times a job that died out of GPU memory runs again
GPU_JOBS = 24  # most jobs at once on a GPU by default, fewer where memory is short:
GB_PER_JOB = 14  # a study step's peak on an H200 is 6.6 GB without bytes, 7.5 GB with them (bench.py);
                 # the margin covers evaluation's graphs and neighbours (README, Running the study)
# two-sided 95% quantiles of Student's t for df = 1..30 (beyond: the df-30 value, slightly
# conservative)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
# left out of the table (summary.json has them): numbers that repeat others (intact = clean,
# zeroed = intact + delta, bpb after noise = clean + delta)
HIDDEN = re.compile(r"acc_norm$|(kinds|rates)\..+\.bpb$|canonical_bpb$|^branch\.(text|task)"
                    r"|\.zeroed\.")

# ------------------------------------------------------------------------------------------------
# the plan: arms, time matching, runs

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m lab.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arms", nargs="+", help="train.py config files, one per arm")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N for every arm")
    p.add_argument("--out", default="results/study")
    p.add_argument("--baseline", default="baseline",
                   help="the arm the others are compared with")
    p.add_argument("--max_iters", type=int,
                   help="every arm's max_iters (time-matched arms: scaled)")
    p.add_argument("--parallel", type=int,
                   help=f"jobs at once (default: on CUDA as many as fit, {GB_PER_JOB} GB each, "
                        f"up to {GPU_JOBS}; 1 on CPU)")
    p.add_argument("--train_args", default="",
                   help="more train.py (and bench.py) options: '--key=value ...'")
    p.add_argument("--eval_args", default="",
                   help="more evaluate.py options, e.g. '--dtype bfloat16'")
    p.add_argument("--text2", help="a second text domain (evaluate.py --text2)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan and the commands, run nothing")
    return p.parse_args(argv)


def load_arms(args):
    """name -> dict(path, cfg: resolved as train.py resolves it, match: _match_time_of, error)."""
    overrides = shlex.split(args.train_args)
    overrides += [f"--max_iters={args.max_iters}"] if args.max_iters else []
    arms = {}
    for path in args.arms:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in arms:
            raise SystemExit(f"error: two arms are named {name!r}")
        arm = arms[name] = dict(path=path, cfg=None, match=None, error=None)
        try:
            arm["cfg"], _ = train.parse_config([path] + overrides)
            arm["match"] = read_config_file(path).get("_match_time_of")
        except SystemExit as e:  # this arm fails; the study goes on
            arm["error"] = str(e).splitlines()[0].removesuffix(" Valid keys:")
    if args.baseline not in arms or arms[args.baseline]["error"]:
        why = f": {arms[args.baseline]['error']}" if args.baseline in arms else ""
        raise SystemExit(f"error: no valid baseline arm {args.baseline!r} (--baseline) among "
                         f"{sorted(arms)}" + why)
    data_dirs = {a["cfg"]["data_dir"] for a in arms.values() if not a["error"]}
    if len(data_dirs) > 1:
        raise SystemExit(f"error: the arms train on different data_dir: {sorted(data_dirs)}")
    return arms


def time_ratios(args, arms):
    """arm -> {matched_to, ratio: step time of the matched arm / its own, ms}, measured once by
    bench.py."""
    path = os.path.join(args.out, "time_match.json")
    saved = json.load(open(path)) if os.path.exists(path) else {}
    for name, arm in arms.items():
        other = arm["match"]
        if not other or arm["error"] or name in saved:
            continue
        if other not in arms or arms[other]["error"]:
            arm["error"] = (f"matched in wall-clock to arm {other!r}, which is not a valid arm of "
                            f"this study")
            continue
        bench_json = os.path.join(args.out, f"bench_{name}.json")
        cmd = [sys.executable, os.path.join(ROOT, "bench.py"), arms[other]["path"], arm["path"],
               f"--json={bench_json}", *shlex.split(args.train_args)]
        print("$ " + shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        os.makedirs(args.out, exist_ok=True)
        if subprocess.run(cmd).returncode:
            arm["error"] = "bench.py failed (its output is above)"
            continue
        ms = [r["ms"] for r in json.load(open(bench_json))["rows"]]
        saved[name] = dict(matched_to=other, ratio=ms[0] / ms[1], ms={other: ms[0], name: ms[1]})
        write_json(path, saved)
    return saved


def plan_runs(args, arms, ratios):
    """One dict per arm and seed: name, dir, steps, state (new, resume, done) and its train.py
    command."""
    runs = []
    for name, arm in arms.items():
        steps = None if arm["error"] else arm_steps(name, arms, ratios)
        for seed in range(1, args.seeds + 1):
            run = dict(arm=name, seed=seed, name=f"{name}_s{seed}", error=arm["error"],
                       dir=os.path.join(args.out, "runs", f"{name}_s{seed}"))
            runs.append(run)
            if steps is None:
                continue  # (a dry run has not measured the ratio)
            run["steps"] = round(steps)
            step = trained_step(run)
            run["state"] = "new" if step is None else "done" if step >= run["steps"] else "resume"
            run["cmd"] = [sys.executable, os.path.join(ROOT, "train.py"), arm["path"],
                          f"--seed={seed}", f"--out_dir={run['dir']}",
                          f"--max_iters={run['steps']}", *shlex.split(args.train_args),
                          *["--init_from=resume"] * (run["state"] == "resume")]
    return runs


def arm_steps(name, arms, ratios, seen=()):
    """An arm's steps: its max_iters or, matched to OTHER, OTHER's steps (themselves matched,
    maybe) x OTHER's step time / its own. None while a ratio is unmeasured (a dry run)."""
    arm = arms[name]
    if not arm["match"]:
        return arm["cfg"]["max_iters"]
    if name in seen:
        raise SystemExit(f"error: arms matched in wall-clock in a circle: {' -> '.join(seen + (name,))}")
    other = arm_steps(arm["match"], arms, ratios, seen + (name,))
    return None if other is None or name not in ratios else other * ratios[name]["ratio"]


def trained_step(run):
    """How far the run has trained (None: not at all): its checkpoint's step or, for a finished
    run kept without its checkpoint (copied without *.pt), its log's last step."""
    ckpt = os.path.join(run["dir"], "ckpt.pt")
    if os.path.exists(ckpt):
        return torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)["step"]
    # without a checkpoint only a trained and evaluated run is kept; an unfinished log is an
    # attempt that died before its first checkpoint
    step = last_step(run["dir"])
    evaluated = os.path.exists(os.path.join(run["dir"], "eval.json"))
    return step if step >= run["steps"] and evaluated else None


def eval_options(args, arms):
    """evaluate.py's options for every run: the arms' data_dir, --text2, --eval_args."""
    data_dir = next(a["cfg"]["data_dir"] for a in arms.values() if not a["error"])
    options = ["--text", data_dir, *(["--text2", args.text2] if args.text2 else [])]
    return options + shlex.split(args.eval_args)


def print_plan(runs):
    """Each run's state, and the command of those that will train."""
    for r in runs:
        state = f"FAILS: {r['error']}" if r["error"] else r.get("state", "steps from bench.py")
        command = f" | {shlex.join(r['cmd'])}" if state in ("new", "resume") else ""
        print(f"{r['name']}: {state}" + command)

# ------------------------------------------------------------------------------------------------
# running jobs: training, then evaluation

def default_parallel(n_runs):
    """One job at a time on a CPU; on a GPU as many as its free memory holds (GB_PER_JOB each), at
    most GPU_JOBS: 21 runs at once filled an H200 and some died out of memory."""
    if not torch.cuda.is_available():
        return 1
    fits = int(torch.cuda.mem_get_info()[0] / 2**30 // GB_PER_JOB)
    return max(1, min(n_runs, GPU_JOBS, fits))


def ran_out_of_memory(job):
    """Whether the job's last attempt (its log from where that attempt began) died out of GPU
    memory."""
    with open(job["log"], errors="replace") as f:
        f.seek(job["log_offset"])
        text = f.read()
    return "OutOfMemoryError" in text or "CUDA out of memory" in text


def run_jobs(jobs, parallel, what):
    """Runs jobs (dicts: name, cmd, log, mode, units() -> (done, total), optional retry_cmd)
    `parallel` at once, printing progress and an ETA; returns the names of those that failed. A
    job that dies out of GPU memory (a neighbour's peak, another process on the GPU) runs again
    (retry_cmd, else cmd; up to OOM_RETRIES times) once no other job waits and at most half as
    many run. Ctrl-C or SIGTERM: the running jobs are told to stop (train.py saves a
    checkpoint) and waited for."""
    # the jobs share the cores, compile workers too
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {"OMP_NUM_THREADS": threads, "TORCHINDUCTOR_COMPILE_THREADS": threads, **os.environ,
           "PYTHONUNBUFFERED": "1"}
    waiting, retry, running, failed = [dict(j, tries=0) for j in jobs], [], {}, []
    t0, shown, first = time.time(), 0.0, None
    units = lambda: [sum(u) for u in zip(*(j["units"]() for j in jobs))] or [0, 0]
    start, total = units()
    try:
        while waiting or retry or running:
            if not waiting and retry and len(running) < max(1, parallel // 2):
                waiting.append(retry.pop(0))
            while waiting and len(running) < parallel:
                j = waiting.pop(0)
                append = j["mode"] == "a" and os.path.exists(j["log"])
                j["log_offset"] = os.path.getsize(j["log"]) if append else 0
                log = open(j["log"], j["mode"])
                p = subprocess.Popen(j["cmd"], stdout=log, stderr=subprocess.STDOUT, env=env)
                running[j["name"]] = p, log, j
            time.sleep(0.2)
            for name, (p, log, j) in list(running.items()):
                if p.poll() is not None:
                    log.close()
                    del running[name]
                    result = f"FAILED (exit {p.returncode})" if p.returncode else "done"
                    if p.returncode and j["tries"] < OOM_RETRIES and ran_out_of_memory(j):
                        retry.append(dict(j, cmd=j.get("retry_cmd", j["cmd"]), mode="a",
                                          tries=j["tries"] + 1))
                        result = "out of GPU memory: it will run again when fewer jobs run"
                    elif p.returncode:
                        failed.append(name)
                    print(f"{what} {name}: " + result)
            if time.time() - shown >= PROGRESS_S or not (waiting or retry or running):
                shown, elapsed, done = time.time(), time.time() - t0, units()[0]
                first = first or ((shown, done) if done > start else None)
                left = minutes_left(first, shown, done, total)
                eta = "eta -" if left is None else f"eta {left:.1f} min"
                print(f"[{what}] {len(running)} running, {len(waiting) + len(retry)} waiting, "
                      f"{len(failed)} failed | {done}/{total} | {elapsed / 60:.1f} min | {eta}",
                      flush=True)
    except KeyboardInterrupt:
        # `timeout` and schedulers signal the group: twice here
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\ninterrupted: stopping {len(running)} job(s); the same command resumes",
              flush=True)
        for p, *_ in running.values():
            p.send_signal(signal.SIGTERM)
            p.wait()
        raise SystemExit(130)
    return failed


def minutes_left(first, now, done, total):
    """Minutes to go at the rate seen since `first`, the (time, units done) of the first progress:
    what came before it (start-up, compilation) says nothing about the rate. None until there is one."""
    if first is None or done <= first[1]:
        return None
    return (now - first[0]) / (done - first[1]) * (total - done) / 60


def last_step(run_dir):
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            return json.loads(f.readlines()[-1])["step"]
    except (OSError, IndexError, ValueError, KeyError):
        return 0


def last_line(path, limit=200):
    """The last non-blank line of a log, cut after `limit` characters (an OOM line is long)."""
    lines = [line for line in open(path).read().splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    return lines[-1][:limit] + " ..." * (len(lines[-1]) > limit)


def train_runs(runs, parallel):
    """Trains the new and interrupted runs; a run that fails gets an error (its log's last line)."""
    todo = [r for r in runs if r.get("state") in ("new", "resume")]
    for r in todo:
        os.makedirs(r["dir"], exist_ok=True)
        if r["state"] == "new" and os.path.exists(f"{r['dir']}/log.jsonl"):
            os.remove(f"{r['dir']}/log.jsonl")  # an earlier attempt's, from before any checkpoint
    # a run that died out of memory resumes from its checkpoint if it wrote one
    again = lambda cmd: [c for c in cmd if not c.startswith("--init_from=")] + ["--init_from=auto"]
    jobs = [dict(name=r["name"], cmd=r["cmd"], retry_cmd=again(r["cmd"]),
                 log=f"{r['dir']}/train.log", mode="a" if r["state"] == "resume" else "w",
                 units=lambda r=r: (last_step(r["dir"]), r["steps"])) for r in todo]
    failed = run_jobs(jobs, parallel, "train")
    for r in (r for r in runs if r["name"] in failed):
        last = last_line(f"{r['dir']}/train.log")
        r["error"] = f"train.py failed: {last} (see {r['dir']}/train.log)"


def eval_jobs(runs, options, parallel, out):
    """evaluate.py on the runs that lack an up-to-date RUN/eval.json, in up to `parallel` groups (it
    writes each run's file as that run is done). A group's log is named after its first run, so that
    a later call, evaluating other runs, keeps the logs of earlier ones."""
    todo = []
    for r in runs:
        path, ckpt = f"{r['dir']}/eval.json", f"{r['dir']}/ckpt.pt"
        # stale: the checkpoint changed since (a run kept without its checkpoint keeps its file)
        if (os.path.exists(path) and os.path.exists(ckpt)
                and os.path.getmtime(path) < os.path.getmtime(ckpt)):
            os.remove(path)
        todo += [] if os.path.exists(path) else [r]
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    groups = [todo[k::parallel] for k in range(min(parallel, len(todo)))]
    evaluate = [sys.executable, os.path.join(ROOT, "evaluate.py")]
    evaluated = lambda g: sum(os.path.exists(f"{r['dir']}/eval.json") for r in g)
    return [dict(name=", ".join(r["name"] for r in g), runs=g,
                 log=os.path.join(out, "eval", f"{g[0]['name']}.log"), mode="w",
                 cmd=[*evaluate, *(r["dir"] for r in g), *options],
                 units=lambda g=g: (evaluated(g), len(g)))
            for g in groups]


def evaluate_runs(runs, options, parallel, out):
    """evaluate.py on the trained runs; (arm, problem) of each run left without an eval.json."""
    jobs = eval_jobs(runs, options, parallel, out)
    failed = run_jobs(jobs, parallel, "evaluate")
    return [(r["arm"], f"{r['name']}: evaluate.py failed (see {j['log']})")
            for j in jobs if j["name"] in failed
            for r in j["runs"] if not os.path.exists(f"{r['dir']}/eval.json")]

# ------------------------------------------------------------------------------------------------
# the numbers of each run: training log and evaluate.py's eval.json

def log_metrics(run_dir, tokens_per_step):
    """train.py's log.jsonl -> (metrics, curve {step: (tokens, training seconds, val bpb)}).
    Training time: each line's dt (seconds per step since the line before) times its steps:
    compilation in, evaluation out."""
    rows = []
    for line in open(os.path.join(run_dir, "log.jsonl")):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("resumed"):  # train.py's record of a resume, not a row
            continue
        # a resumed run logs again from its checkpoint's step: a row below the last one drops the
        # rows after it (steps the checkpoint did not keep), and replaces the row of its kind
        # (train or val) there
        while rows and (rows[-1]["step"] > r["step"] or rows[-1]["step"] == r["step"]
                        and ("dt" in rows[-1]) == ("dt" in r)):
            rows.pop()
        rows.append(r)
    trains, vals = [r for r in rows if "dt" in r], [r for r in rows if "val_bpb" in r]
    clock, seconds = [(0, 0.0)], 0.0
    for r in trains:
        seconds += r["dt"] * (r["step"] - clock[-1][0])
        clock.append((r["step"], seconds))
    at = lambda step: max(s for st, s in clock if st <= step)
    curve = {v["step"]: (v["step"] * tokens_per_step, at(v["step"]), v["val_bpb"]) for v in vals}
    tok_s = statistics.median(r["tok_s"] for r in trains) if trains else None
    return {"train.val_bpb": vals[-1]["val_bpb"], "train.val_loss": vals[-1]["val_loss"],
            "train.steps": vals[-1]["step"], "train.minutes": seconds / 60,
            "train.tok_s": tok_s}, curve


def trained_on(run_dir):
    """The devices train.py's log names ("cuda (NVIDIA H200)", "cpu"; older logs: "cuda"): a run
    resumed elsewhere has more than one; arms of one study may have trained on different machines."""
    path = os.path.join(run_dir, "train.log")
    text = open(path, errors="replace").read() if os.path.exists(path) else ""
    return sorted(set(re.findall(r"process\(es\) on (\w+(?: \([^)]*\))?)", text))) or ["?"]


def flatten(tree, prefix=""):
    """Numeric leaves of nested dicts, named by their dotted path (lists, strings, booleans left
    out)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def ckpt_params(path):
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(GPTConfig(**ckpt["model_config"])).parameters())


def run_metrics(run, tokens_per_step):
    metrics, curve = log_metrics(run["dir"], tokens_per_step)
    path, ckpt = f"{run['dir']}/eval.json", f"{run['dir']}/ckpt.pt"
    res = next(iter(json.load(open(path))["checkpoints"].values())) if os.path.exists(path) else {}
    # a run kept without its checkpoint: the parameters evaluate.py counted
    metrics["params"] = ckpt_params(ckpt) if os.path.exists(ckpt) else res["info"]["params"]
    # every number evaluate.py wrote, whatever its keys
    metrics.update(flatten({k: v for k, v in res.items() if k != "info"}))
    return metrics, curve


def collect(runs, arms):
    """The metrics and val curves of the runs: {arm: {seed: metrics}}, {arm: {seed: curve}}."""
    per_run, curves = {}, {}
    for r in runs:
        metrics, curve = run_metrics(r, arms[r["arm"]]["cfg"]["total_batch_size"])
        per_run.setdefault(r["arm"], {})[r["seed"]] = metrics
        curves.setdefault(r["arm"], {})[r["seed"]] = curve
    return per_run, curves

# ------------------------------------------------------------------------------------------------
# statistics over seeds

def mean_sd(values):
    xs = [x for x in values if x is not None]
    return (statistics.fmean(xs) if xs else None), (statistics.stdev(xs) if len(xs) > 1 else None)


def paired(a, b):
    """a - b, paired by position where both exist: mean, sd, n and a 95% t-interval (n >= 2)."""
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not d:
        return None
    mean, sd = mean_sd(d)
    half = T975[min(len(d) - 2, 29)] * sd / math.sqrt(len(d)) if len(d) > 1 else None
    ci95 = None if half is None else [mean - half, mean + half]
    return dict(mean=mean, sd=sd, n=len(d), ci95=ci95)


def summarise(per_run, baseline):
    """{arm: {seed: metrics}} -> {arm: {"seeds": [...], metric: {mean, sd, values,
    vs_baseline}}}."""
    names = list(dict.fromkeys(m for seeds in per_run.values()
                               for ms in seeds.values() for m in ms))
    arms = {}
    for arm, by_seed in per_run.items():
        seeds = sorted(by_seed)
        arms[arm] = {"seeds": seeds}
        for name in names:
            values = [by_seed[s].get(name) for s in seeds]
            if any(v is not None for v in values):
                mean, sd = mean_sd(values)
                arms[arm][name] = dict(mean=mean, sd=sd, values=values)
                base = [per_run.get(baseline, {}).get(s, {}).get(name) for s in seeds]
                diff = paired(values, base)
                if arm != baseline and diff:
                    arms[arm][name]["vs_baseline"] = diff
    return arms

# ------------------------------------------------------------------------------------------------
# the report: summary.json, summary.md, plots

def study_settings(args, argv, arms, ratios, runs, problems, t0):
    """What summary.json records about the study: command, code, machine, arms and evaluation."""
    evals = [p for p in (f"{r['dir']}/eval.json" for r in runs) if os.path.exists(p)]
    devices = {}
    for r in runs:
        devices[r["arm"]] = sorted(set(devices.get(r["arm"], [])) | set(trained_on(r["dir"])))
    return dict(command=shlex.join(["python", "-m", "lab.study", *argv]), **code_state(),
                torch=torch.__version__,
                device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                python=sys.version.split()[0], baseline=args.baseline,
                failed=[p for _, p in problems], minutes=(time.time() - t0) / 60,
                time_match=ratios,
                trained_on=devices,
                evaluate=json.load(open(evals[0]))["settings"] if evals else None,
                arms={n: dict(path=a["path"], error=a["error"], config=a["cfg"])
                      for n, a in arms.items()})


def code_state():
    """The commit, and whether tracked files differ from it (new files, such as a study's own runs,
    are not code)."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()
    return dict(commit=git("rev-parse", "HEAD"),
                dirty=bool(git("status", "--porcelain", "--untracked-files=no")))


def fmt(x, sign=False):
    digits = 0 if abs(x or 0) >= 1000 else 2 if abs(x or 0) >= 10 else 4
    return "-" if x is None else f"{x:{'+' if sign else ''},.{digits}f}"


def markdown(summary, baseline):
    arms, s = summary["arms"], summary["settings"]
    varies = lambda n: len({v for e in arms.values()
                            for v in e.get(n, {}).get("values", [])} - {None}) > 1
    # constants (counts, settings) and repeats left out
    names = [n for n in dict.fromkeys(n for e in arms.values() for n in e if n != "seeds")
             if varies(n) and not HIDDEN.search(n)]
    sd = lambda m: "" if m["sd"] is None else f" ± {fmt(m['sd'])}"
    cell = lambda m: "-" if m is None else fmt(m["mean"]) + sd(m)
    ci = lambda lo, hi: f" [{fmt(lo, 1)}, {fmt(hi, 1)}]" + "*" * (lo > 0 or hi < 0)
    interval = lambda d: ci(*d["ci95"]) if d["ci95"] else ""
    diff = lambda d: "-" if d is None else fmt(d["mean"], True) + interval(d)
    others = [a for a in arms if a != baseline]
    seeds = ", ".join(f"{a} {len(e['seeds'])}" for a, e in arms.items())
    lines = [f"`{s['command']}`", "",
             # where this summary was written: runs finished earlier may have trained elsewhere
             f"summarised at commit {s['commit'][:12] or '?'}{' + local changes' * s['dirty']}, "
             f"on {s['device']}, torch {s['torch']}; seeds: {seeds}", "",
             "trained on: " + "; ".join(f"{a} {', '.join(d)}" for a, d in s["trained_on"].items()), "",
             "Mean ± sd over seeds (metrics that differ between runs; summary.json has them "
             "all):", "",
             "| metric | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(cell(e.get(n)) for e in arms.values()) + " |" for n in names]
    lines += ["", f"Paired difference to {baseline} (same seed): mean [95% t-interval]; "
                  f"*: it excludes 0", "",
              "| metric | " + " | ".join(f"{a} − {baseline}" for a in others) + " |",
              "|---" * (len(others) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(diff(arms[a].get(n, {}).get("vs_baseline")) for a in others)
              + " |" for n in names]
    return "\n".join(lines + [""] + [f"FAILED: {p}" for p in s["failed"]]) + "\n"


def write_summary(out, summary, baseline):
    """summary.json and summary.md (the table, printed too)."""
    write_json(os.path.join(out, "summary.json"), summary)
    table = markdown(summary, baseline)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table)
    print(table)


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=1, default=str))

# ------------------------------------------------------------------------------------------------
# the study: plan, train, evaluate, summarise

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, t0 = parse_args(argv), time.time()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's stop acts as Ctrl-C
    arms = load_arms(args)
    ratios = time_ratios(args, arms)
    runs = plan_runs(args, arms, ratios)
    options = eval_options(args, arms)
    print_plan(runs)
    if args.dry_run:
        return print("then: " + shlex.join(["python", "evaluate.py", "RUN...", *options]))
    parallel = args.parallel or default_parallel(len(runs))
    train_runs(runs, parallel)
    trained = [r for r in runs if not r["error"]]
    eval_problems = evaluate_runs(trained, options, parallel, args.out)
    problems = [(r["arm"], f"{r['name']}: {r['error']}") for r in runs if r["error"]]
    problems += eval_problems

    per_run, curves = collect(trained, arms)
    settings = study_settings(args, argv, arms, ratios, trained, problems, t0)
    summary = {"arms": summarise(per_run, args.baseline), "settings": settings}
    write_summary(args.out, summary, args.baseline)
    study_plots(args.out, summary["arms"], curves)
    if problems:
        arms_failed = ", ".join(dict.fromkeys(a for a, _ in problems))
        print(f"error: arms with failed runs: {arms_failed} (the summary holds the rest):\n  "
              + "\n  ".join(p for _, p in problems), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
