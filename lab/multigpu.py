"""
The multi-GPU proof (issue 32): one command on a machine with N GPUs shows that N processes
(torchrun, DDP) train as one does, how tokens/s scale, that a stopped run resumes on its curve, and
that a dead worker stops the job, which then resumes.

    python -m lab.multigpu config/baseline.py config/bytes.py --nproc=8 --out=results/multigpu
    python -m lab.multigpu config/bytes.py --nproc=2 --out=results/mg2 --phases=equivalence,resume

Phases (--phases; all by default). Equivalence, resume and failure train the last CONFIG (the byte
config above: the one with more to go wrong), --steps steps, evaluating every --eval_interval:
- equivalence: 1 process (train.py) and N (torchrun), same seed and total_batch_size, each process
  at the same micro-batch (the single process accumulates N times as many micro-steps). Target:
  max |Δ loss| over the logged steps and |Δ val bpb| (same validation windows, same definition)
  within --tol (auto: 1e-5 in float32, 0.05 loss / 0.01 bpb in bfloat16).
- scaling: each CONFIG at its batch_size per process, without accumulation, on 1 process and on N
  (total_batch_size batch_size x block_size x processes), --scaling_steps steps. Efficiency = tok/s
  on N / (N x tok/s on 1), each the median of the logged tokens/s after the first --warm log lines
  (compilation). Target: >= 95% on 2 processes, >= 90% on more; on a CPU, numbers only (n/a).
- resume: SIGTERM to torchrun once step --steps/2 is logged (train.py finishes its step, saves, exits
  143), then --init_from=resume to the end: its losses at every logged step must equal the
  uninterrupted N-process run's (equivalence's, else run here) within the loss tolerance.
- failure: SIGKILL to one worker (rank N-1, a child of torchrun) after the first checkpoint; the job
  must stop, non-zero, within 60 s (seconds from the kill to torchrun's exit, exit code and the
  last lines are recorded); --init_from=auto then resumes it from its checkpoint to the last step.

Run R's files go to OUT/runs/R (train.py's log.jsonl and ckpt.pt, its output in train.log); a phase
starts its runs afresh. Writes OUT/summary.json, OUT/summary.md and OUT/multigpu.tar.gz (all but
checkpoints). The environment passes through unchanged (NCCL_* included). Every wait has a time
limit; a phase that fails records why, and the others still run. Exit status 1 if any phase fails.
Tested on CPU processes (gloo) only: tests/test_multigpu.py.
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time

import torch

import train
from lab.study import code_state, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
TRAIN = os.path.join(ROOT, "train.py")  # run from the current directory, as config files expect
PHASES = ("equivalence", "scaling", "resume", "failure")
STOP_WITHIN_S = 60  # a job with a dead worker must end this soon
PROGRESS_S = 30     # seconds between progress lines while a run trains
T0 = time.time()
LIVE = []           # the jobs still running: killed if the phase fails or the tool is stopped


def say(msg):
    s = int(time.time() - T0)
    print(f"[{s // 60}:{s % 60:02d}] {msg}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m lab.multigpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="train.py config files")
    p.add_argument("--nproc", type=int, required=True, help="processes (GPUs) of the N-process runs")
    p.add_argument("--out", default="results/multigpu")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated, of " + ", ".join(PHASES))
    p.add_argument("--steps", type=int, default=300, help="steps of the equivalence, resume and failure runs")
    p.add_argument("--eval_interval", type=int, help="evaluation and checkpoint interval of those runs "
                   "(default: steps // 5)")
    p.add_argument("--log_interval", type=int, default=10, help="log interval of every run")
    p.add_argument("--scaling_steps", type=int, default=100)
    p.add_argument("--warm", type=int, default=2, help="log lines left out of the tokens/s median")
    p.add_argument("--tol", type=float, help="loss tolerance (default: by dtype, see above)")
    p.add_argument("--train_args", default="", help="more train.py options: '--key=value ...'")
    p.add_argument("--timeout", type=float, default=3600, help="seconds any one run may take")
    args = p.parse_args(argv)
    args.phases = [x for x in args.phases.split(",") if x]
    bad = [x for x in args.phases if x not in PHASES]
    if bad or not args.phases:
        p.error(f"--phases: {bad or 'none'}: choose from {', '.join(PHASES)}")
    if args.nproc < 2:
        p.error("--nproc must be at least 2")
    args.eval_interval = args.eval_interval or max(1, args.steps // 5)
    return args

# ------------------------------------------------------------------------------------------------
# runs: launching, watching, stopping


class Job:
    """A train.py run (one process, or torchrun with N), its output into RUN_DIR/<log>."""

    def __init__(self, name, run_dir, nproc, options, log="train.log"):
        self.name, self.dir, self.nproc = name, run_dir, nproc
        if nproc == 1:
            self.cmd = [sys.executable, TRAIN]
        else:
            self.cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={nproc}", TRAIN]
        self.cmd += options + [f"--out_dir={run_dir}"]
        os.makedirs(run_dir, exist_ok=True)
        self.log_path = os.path.join(run_dir, log)
        with open(self.log_path, "w") as f:
            f.write("$ " + shlex.join(self.cmd) + "\n")
        self.log = open(self.log_path, "a")
        # the machine's environment as it is (NCCL_* too); unbuffered, so the log keeps up
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.t0 = time.time()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        LIVE.append(self)
        say(f"{name}: started ({nproc} process{'es' * (nproc > 1)})")

    def last_step(self):
        rows = read_log(self.dir)
        return max((r["step"] for r in rows), default=-1)

    def wait(self, timeout, until=None):
        """Waits for the run to end (returns its exit status), or with `until` (a function of the
        log's rows) for that to hold (returns None, the run still going). A run past `timeout`
        seconds is killed: TimeoutError."""
        start = shown = time.time()
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.ended()
                return rc
            if until is not None and until(read_log(self.dir)):
                return None
            if time.time() - start > timeout:
                self.kill()
                raise TimeoutError(f"{self.name} did not {'get there' if until else 'end'} within "
                                   f"{timeout:.0f} s (killed; see {self.log_path})")
            if time.time() - shown > PROGRESS_S:
                shown = time.time()
                say(f"{self.name}: step {self.last_step()}")
            time.sleep(0.05)

    def workers(self):
        """{rank: pid} of torchrun's children (train.py processes)."""
        pids = children(self.proc.pid)
        ranks = {}
        for pid in pids:
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            rank = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
            if rank:
                ranks[int(rank[0])] = pid
        return ranks

    def kill(self):
        """SIGKILL to the run and its workers (in sessions of their own)."""
        for pid in list(self.workers().values()) + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.ended()

    def ended(self):
        self.log.close()
        if self in LIVE:
            LIVE.remove(self)

    def tail(self, n=12):
        return read_tail(self.log_path, n)


def children(pid):
    """The pids of a process's children: /proc's children lists, else ps."""
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        r = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
        return [int(c) for c in r.stdout.split()]


def read_tail(path, n):
    with open(path, errors="replace") as f:
        lines = [line.rstrip() for line in f if line.strip()]
    return lines[-n:]


def read_log(run_dir):
    """log.jsonl's rows (a line cut short is skipped); train.py itself cuts the log back on
    resume, so each step has at most one train and one val row, bar its record of the resume."""
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            lines = f.readlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not r.get("resumed"):
            rows.append(r)
    return rows


def curves(run_dir):
    """({step: loss}, {step: (val loss, val bpb)}, [tokens/s of each log line in order])"""
    rows = read_log(run_dir)
    return ({r["step"]: r["loss"] for r in rows if "loss" in r},
            {r["step"]: (r["val_loss"], r["val_bpb"]) for r in rows if "val_loss" in r},
            [r["tok_s"] for r in rows if "tok_s" in r])


def train_setup(job):
    """train.py's line on processes, device, precision and kernels ('' if it printed none)."""
    return next((line for line in open(job.log_path, errors="replace") if "process(es) on" in line), "")


def train_dtype(job):
    """The precision train.py reported ('float32' or 'bfloat16')."""
    return "bfloat16" if "| bfloat16 |" in train_setup(job) else "float32"


def finish(job, timeout, expect=0):
    rc = job.wait(timeout)
    say(f"{job.name}: exit {rc} in {time.time() - job.t0:.0f} s, last step {job.last_step()}")
    if expect is not None and rc != expect:
        raise RuntimeError(f"{job.name} exited {rc}: " + " | ".join(job.tail(3)))
    return rc


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    return path

# ------------------------------------------------------------------------------------------------
# the phases


class Proof:
    def __init__(self, args):
        self.args = args
        self.runs = os.path.join(args.out, "runs")
        self.config = args.configs[-1]
        self.extra = shlex.split(args.train_args)
        self.cfg = {c: train.parse_config([c] + self.extra)[0] for c in args.configs}
        self.full = None  # the uninterrupted N-process run (equivalence's), for resume

    def options(self, config, **over):
        return [config] + self.extra + [f"--{k}={v}" for k, v in over.items()]

    def proof_options(self):
        """The equivalence, resume and failure runs' options on N processes, and the micro-batch
        both process counts use: the config's batch_size, or the largest divisor of it that
        splits total_batch_size over N processes."""
        cfg, N = self.cfg[self.config], self.args.nproc
        total, T, B = cfg["total_batch_size"], cfg["block_size"], cfg["batch_size"]
        b = next((b for b in range(B, 0, -1) if B % b == 0 and total % (b * T * N) == 0), None)
        if b is None:
            raise RuntimeError(f"total_batch_size {total} does not split over {N} processes of "
                               f"windows of {T} tokens")
        return b, self.options(self.config, batch_size=b, max_iters=self.args.steps,
                               eval_interval=self.args.eval_interval,
                               log_interval=self.args.log_interval)

    def tolerances(self, dtype):
        if dtype == "float32":
            return self.args.tol or 1e-5, self.args.tol or 1e-5
        return self.args.tol or 0.05, 0.01

    def equivalence(self):
        b, opts = self.proof_options()
        N, timeout = self.args.nproc, self.args.timeout
        one = Job("equivalence_1proc", fresh(f"{self.runs}/equivalence_1proc"), 1, opts)
        finish(one, timeout)
        many = Job(f"equivalence_{N}proc", fresh(f"{self.runs}/equivalence_{N}proc"), N, opts)
        finish(many, timeout)
        self.full = many.dir
        (l1, v1, _), (ln, vn, _) = curves(one.dir), curves(many.dir)
        steps = sorted(set(l1) & set(ln))
        d = [abs(l1[s] - ln[s]) for s in steps]
        last = max(set(v1) & set(vn))
        dtype = train_dtype(many)
        tol, bpb_tol = self.tolerances(dtype)
        bpb = dict(one=v1[last][1], many=vn[last][1])
        ok = (len(steps) == len(l1) == len(ln) > 0 and max(d) <= tol
              and abs(bpb["one"] - bpb["many"]) <= bpb_tol)
        return dict(verdict="pass" if ok else "fail", config=self.config, dtype=dtype,
                    micro_batch=b, steps=self.args.steps, logged_steps=len(steps),
                    max_abs_dloss=max(d), mean_abs_dloss=statistics.fmean(d),
                    val_step=last, val_bpb_1proc=bpb["one"], val_bpb_nproc=bpb["many"],
                    abs_dval_bpb=abs(bpb["one"] - bpb["many"]),
                    target=f"max |Δ loss| <= {tol:g}, |Δ val bpb| <= {bpb_tol:g}")

    def scaling(self):
        N, args = self.args.nproc, self.args
        target = 0.95 if N == 2 else 0.90
        rows, ok, gpu = {}, True, True
        for config in args.configs:
            name = os.path.splitext(os.path.basename(config))[0]
            cfg = self.cfg[config]
            B, T = cfg["batch_size"], cfg["block_size"]
            tok_s = {}
            for n in (1, N):
                # evaluation at the first and last step only, on one batch per process
                opts = self.options(config, total_batch_size=n * B * T, max_iters=args.scaling_steps,
                                    eval_interval=args.scaling_steps + 1, eval_tokens=B * T * n,
                                    log_interval=args.log_interval)
                job = Job(f"scaling_{name}_{n}proc", fresh(f"{self.runs}/scaling_{name}_{n}proc"),
                          n, opts)
                finish(job, args.timeout)
                timed = curves(job.dir)[2][args.warm:]
                if not timed:
                    raise RuntimeError(f"{job.name}: no log lines after the first {args.warm}: "
                                       f"raise --scaling_steps")
                tok_s[n] = statistics.median(timed)
                gpu &= " on cuda" in train_setup(job)
            eff = tok_s[N] / (N * tok_s[1])
            ok &= eff >= target
            rows[name] = dict(tok_s_1proc=tok_s[1], tok_s_nproc=tok_s[N], efficiency=eff,
                              batch_size=B, block_size=T)
        # processes sharing a CPU's cores do not scale: numbers only
        verdict = ("pass" if ok else "fail") if gpu else "n/a"
        return dict(verdict=verdict, configs=rows, on_gpus=gpu,
                    target=f"efficiency >= {target:.0%}" + " (GPUs only)" * (not gpu))

    def resume(self):
        _, opts = self.proof_options()
        N, args = self.args.nproc, self.args
        if self.full is None:  # equivalence did not run (or failed before its N-process run)
            full = Job(f"resume_{N}proc_full", fresh(f"{self.runs}/resume_{N}proc_full"), N, opts)
            finish(full, args.timeout)
            self.full = full.dir
        cut = Job(f"resume_{N}proc", fresh(f"{self.runs}/resume_{N}proc"), N, opts)
        at = args.steps // 2
        if cut.wait(args.timeout, until=lambda rows: any(r["step"] >= at for r in rows)) is not None:
            raise RuntimeError(f"the run ended before step {at}: " + " | ".join(cut.tail(3)))
        os.kill(cut.proc.pid, signal.SIGTERM)
        say(f"{cut.name}: SIGTERM to torchrun at step {cut.last_step()}")
        rc = finish(cut, args.timeout, expect=None)
        out = open(cut.log_path, errors="replace").read()
        stopped = int(out.split("stopped at step ")[1].split(";")[0]) if "stopped at step " in out else None
        if stopped is None:
            raise RuntimeError(f"train.py did not stop with a checkpoint (exit {rc}): "
                               + " | ".join(cut.tail(3)))
        ckpt_step = torch.load(os.path.join(cut.dir, "ckpt.pt"), map_location="cpu", mmap=True,
                               weights_only=True)["step"]
        again = Job(f"resume_{N}proc_resumed", cut.dir, N, opts + ["--init_from=resume"],
                    log="train_resumed.log")
        finish(again, args.timeout)
        (lf, vf, _), (lc, vc, _) = curves(self.full), curves(cut.dir)
        tol = self.tolerances(train_dtype(cut))[0]
        steps = sorted(lf)
        d = [abs(lf[s] - lc[s]) for s in steps if s in lc]
        dv = [abs(vf[s][0] - vc[s][0]) for s in vf if s in vc]
        ok = (len(d) == len(steps) > 0 and max(d) <= tol and set(vf) == set(vc) and max(dv) <= tol
              and stopped == ckpt_step < args.steps)
        return dict(verdict="pass" if ok else "fail", signal_at_step=at, stopped_at_step=stopped,
                    torchrun_exit=rc, checkpoint_step=ckpt_step,
                    logged_steps=len(steps), compared_steps=len(d), max_abs_dloss=max(d, default=None),
                    max_abs_dval_loss=max(dv, default=None), last_step=max(lc, default=None),
                    target=f"losses at every logged step within {tol:g} of the uninterrupted run")

    def failure(self):
        _, opts = self.proof_options()
        N, args = self.args.nproc, self.args
        job = Job(f"failure_{N}proc", fresh(f"{self.runs}/failure_{N}proc"), N, opts)
        ckpt = os.path.join(job.dir, "ckpt.pt")
        first = args.eval_interval  # the first checkpoint's step
        if first >= args.steps:
            raise RuntimeError(f"--eval_interval {first} leaves no checkpoint before the last step")
        past = lambda rows: os.path.exists(ckpt) and any("loss" in r and r["step"] > first for r in rows)
        if job.wait(args.timeout, until=past) is not None:
            raise RuntimeError(f"the run ended before step {first}: " + " | ".join(job.tail(3)))
        step, workers = job.last_step(), job.workers()
        if N - 1 not in workers:
            job.kill()
            raise RuntimeError(f"no worker of rank {N - 1} among torchrun's children {workers}")
        lines_before = len(read_tail(job.log_path, 10**9))
        t_kill = time.time()
        os.kill(workers[N - 1], signal.SIGKILL)
        say(f"{job.name}: SIGKILL to rank {N - 1} (pid {workers[N - 1]}) at step {step}")
        try:
            rc = job.wait(max(3 * STOP_WITHIN_S, 120))
        except TimeoutError:
            rc = None  # job.wait killed it
        seconds = time.time() - t_kill
        say(f"{job.name}: torchrun exit {rc} {seconds:.1f} s after the kill")
        after = read_tail(job.log_path, 10**9)[lines_before:]
        message = [line for line in after if "Signal 9 (SIGKILL)" in line or "Error" in line][:6]
        resumed = Job(f"failure_{N}proc_auto", job.dir, N, opts + ["--init_from=auto"],
                      log="train_auto.log")
        finish(resumed, args.timeout)
        out = open(resumed.log_path, errors="replace").read()
        resumed_from = (int(out.split("resumed from ")[1].split(" at step ")[1].split()[0])
                        if "resumed from " in out else None)
        last = resumed.last_step()
        ok = (rc not in (None, 0) and seconds <= STOP_WITHIN_S and bool(message)
              and resumed_from is not None and last >= args.steps)
        return dict(verdict="pass" if ok else "fail", killed_rank=N - 1, killed_at_step=step,
                    seconds_to_exit=seconds, torchrun_exit=rc, message=message,
                    last_lines=after[-12:], resumed_from_step=resumed_from, last_step=last,
                    target=f"non-zero exit within {STOP_WITHIN_S} s with a message; "
                           f"--init_from=auto reaches step {args.steps}")

# ------------------------------------------------------------------------------------------------
# the report


def fmt(x):
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.4f}"
    return str(x)


def markdown(summary):
    s = summary["settings"]
    lines = [f"`{s['command']}`", "", f"commit {s['commit'][:12]}{' + local changes' * s['dirty']}, "
             f"{s['nproc']} processes on {s['device']}, torch {s['torch']}, {s['minutes']:.1f} min", "",
             "| phase | verdict | target | numbers |", "|---|---|---|---|"]
    for name, r in summary["phases"].items():
        if r["verdict"] == "error":
            nums = r["error"]
        elif name == "scaling":
            nums = "; ".join(f"{c}: {fmt(v['tok_s_1proc'])} → {fmt(v['tok_s_nproc'])} tok/s, "
                             f"efficiency {v['efficiency']:.1%}" for c, v in r["configs"].items())
        elif name == "equivalence":
            nums = (f"{r['logged_steps']} logged steps ({r['dtype']}): max |Δ loss| "
                    f"{fmt(r['max_abs_dloss'])}, mean {fmt(r['mean_abs_dloss'])}; val bpb at step "
                    f"{r['val_step']}: {fmt(r['val_bpb_1proc'])} (1) vs {fmt(r['val_bpb_nproc'])} (N)")
        elif name == "resume":
            nums = (f"SIGTERM at step {r['signal_at_step']}, stopped at {r['stopped_at_step']} "
                    f"(torchrun exit {r['torchrun_exit']}); max |Δ loss| {fmt(r['max_abs_dloss'])} "
                    f"over {r['compared_steps']} steps, to step {r['last_step']}")
        else:
            nums = (f"rank {r['killed_rank']} killed at step {r['killed_at_step']}: torchrun exit "
                    f"{r['torchrun_exit']} after {r['seconds_to_exit']:.1f} s; auto-resumed from step "
                    f"{r['resumed_from_step']} to {r['last_step']}")
        cells = [name, r["verdict"].upper(), r.get("target", ""), nums]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out, summary):
    write_json(os.path.join(out, "summary.json"), summary)
    table = markdown(summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table)
    print(table, flush=True)
    tar_path = os.path.join(out, "multigpu.tar.gz")
    skip = lambda t: None if t.name.endswith((".pt", ".tmp", "train.lock", ".tar.gz")) else t
    with tarfile.open(tar_path + ".tmp", "w:gz") as tar:
        tar.add(out, arcname=os.path.basename(os.path.abspath(out)), filter=skip)
    os.replace(tar_path + ".tmp", tar_path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    proof = Proof(args)
    phases = {}
    for name in args.phases:
        say(f"phase {name}")
        try:
            phases[name] = getattr(proof, name)()
        except (RuntimeError, TimeoutError, OSError, ValueError, KeyError, IndexError) as e:
            phases[name] = dict(verdict="error", error=f"{type(e).__name__}: {e}")
        finally:  # a phase that failed (or Ctrl-C) leaves no run behind
            for job in list(LIVE):
                job.kill()
        say(f"phase {name}: {phases[name]['verdict']}"
            + (f" ({phases[name]['error']})" if "error" in phases[name] else ""))
    device = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
              if torch.cuda.is_available() else "cpu")
    settings = dict(command=shlex.join(["python", "-m", "lab.multigpu", *argv]),
                    **code_state(), torch=torch.__version__, device=device, nproc=args.nproc,
                    nccl_env={k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
                    minutes=(time.time() - t0) / 60, configs=args.configs, steps=args.steps)
    summary = dict(settings=settings, phases=phases)
    write_report(args.out, summary)
    return 0 if all(p["verdict"] in ("pass", "n/a") for p in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
