"""lab/study.py: the statistics against hand-computed numbers, the training log's time, and the runner end to end
on CPU (tiny arms x 2 seeds): summary.json, wall-clock matching, failed arms, resume and skip."""
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from conftest import PLAIN, ROOT, run_inprocess
from lab import study

TINY = dict(block_size=32, n_layer=1, n_head=2, n_embd=32, batch_size=4, total_batch_size=128, max_iters=6,
            eval_interval=3, eval_tokens=128, log_interval=1, warmup_iters=2, learning_rate=3e-3, min_lr=3e-4,
            device="cpu")
BYTES = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=16, budget=96)
EVAL = ("--pairs 4 --ctx_chars 60 --cont_chars 20 --task_items 2 --families spell,first_letter "
        "--noise swap:0.1 --seg_rates 0.5 --batch_tokens 512 --max_bytes 4000 --device cpu")


def test_paired_difference_and_interval_by_hand():
    d = study.paired([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])  # differences 0.5, 1, 1.5: mean 1, sd 0.5
    half = 4.303 * 0.5 / math.sqrt(3)  # t(0.975, df 2) = 4.303
    assert d["n"] == 3 and d["mean"] == pytest.approx(1.0) and d["sd"] == pytest.approx(0.5)
    assert d["ci95"] == pytest.approx([1.0 - half, 1.0 + half])
    d = study.paired([1.0, None, 3.0], [0.0, 1.0, 1.0])  # a missing value drops its pair: differences 1, 2
    assert d["n"] == 2 and d["ci95"] == pytest.approx([1.5 - 12.706 * 0.5, 1.5 + 12.706 * 0.5])
    assert study.paired([1.0], [0.5])["ci95"] is None and study.paired([None], [1.0]) is None
    per_run = {"base": {1: {"m": 1.0}, 2: {"m": 3.0}}, "x": {1: {"m": 2.0}, 2: {"m": 3.5}}}
    arms = study.summarise(per_run, "base")
    assert arms["x"]["seeds"] == [1, 2] and arms["x"]["m"]["values"] == [2.0, 3.5]
    assert arms["x"]["m"]["mean"] == 2.75 and arms["x"]["m"]["sd"] == pytest.approx(math.sqrt(1.125))
    assert arms["x"]["m"]["vs_baseline"]["mean"] == pytest.approx(0.75)  # differences 1 and 0.5
    assert "vs_baseline" not in arms["base"]["m"]


def test_log_metrics_after_a_resume(tmp_path):
    """A resumed run logs again from its checkpoint (step 4): the later rows replace the earlier ones."""
    rows = [dict(step=0, val_loss=5.0, val_bpb=2.0), dict(step=2, loss=4, dt=1.0, tok_s=100),
            dict(step=4, loss=3, dt=0.5, tok_s=200), dict(step=4, val_loss=4.0, val_bpb=1.6),
            dict(step=6, loss=2, dt=9.0, tok_s=10),  # lost: the run died before its next checkpoint
            dict(step=4, val_loss=4.0, val_bpb=1.6), dict(step=8, loss=2, dt=2.0, tok_s=50),
            dict(step=8, val_loss=3.0, val_bpb=1.2)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
    metrics, curve = study.log_metrics(str(tmp_path), tokens_per_step=10)
    seconds = 2 * 1.0 + 2 * 0.5 + 4 * 2.0
    assert metrics["train.minutes"] == pytest.approx(seconds / 60) and metrics["train.steps"] == 8
    assert metrics["train.val_bpb"] == 1.2 and metrics["train.tok_s"] == 100
    assert curve == {0: (0, 0.0, 2.0), 4: (40, 3.0, 1.6), 8: (80, seconds, 1.2)}


def test_log_metrics_keep_the_evaluation_at_the_resume_step(tmp_path):
    """A log as train.py cuts it back on resume: its record of the resume is not a row, so the
    evaluation at the checkpoint's step stays on the curve."""
    rows = [dict(step=0, val_loss=5.0, val_bpb=2.0), dict(step=4, loss=3, dt=0.5, tok_s=200),
            dict(step=4, val_loss=4.0, val_bpb=1.6), dict(step=4, resumed=True, changed={}),
            dict(step=8, loss=2, dt=2.0, tok_s=50), dict(step=8, val_loss=3.0, val_bpb=1.2)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics, curve = study.log_metrics(str(tmp_path), tokens_per_step=10)
    assert curve == {0: (0, 0.0, 2.0), 4: (40, 2.0, 1.6), 8: (80, 10.0, 1.2)}
    assert metrics["train.minutes"] == pytest.approx(10.0 / 60)


def test_runs_kept_without_checkpoints_are_done(tmp_path, capsys):
    """Results copied without *.pt: a run whose log reached its steps and that has an eval.json is done (not
    trained or evaluated again) and summarised from both; one with an unfinished log or no eval.json is new."""
    args = study.parse_args(["baseline.py", "--seeds=3", f"--out={tmp_path}"])
    arms = {"baseline": dict(path="baseline.py", cfg=dict(TINY), match=None, error=None)}
    rows = [dict(step=0, val_loss=5.0, val_bpb=2.0), dict(step=3, loss=4, dt=1.0, tok_s=100),
            dict(step=6, loss=3, dt=0.5, tok_s=200), dict(step=6, val_loss=4.0, val_bpb=1.6)]
    res = {"info": {"step": 6, "params": 1234}, "text": {"bpb": 1.5}}
    # s1: trained and evaluated; s2: died at step 3, before any checkpoint; s3: trained, never evaluated
    for seed, n_rows, evaluated in ((1, 4, True), (2, 2, True), (3, 4, False)):
        d = tmp_path / "runs" / f"baseline_s{seed}"
        d.mkdir(parents=True)
        (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_rows]))
        if evaluated:
            (d / "eval.json").write_text(json.dumps({"settings": {}, "checkpoints": {str(d): res}}))
    runs = study.plan_runs(args, arms, {})
    assert [r["state"] for r in runs] == ["done", "new", "new"]
    study.print_plan(runs)
    assert "baseline_s1: done\n" in capsys.readouterr().out
    jobs = study.eval_jobs(runs, ["--text", "data"], 2, str(tmp_path))  # no checkpoint: no stale eval.json
    assert [r["name"] for j in jobs for r in j["runs"]] == ["baseline_s3"]
    # its log is named after the run, not after the group's index, which an earlier call's log may hold
    assert [os.path.basename(j["log"]) for j in jobs] == ["baseline_s3.log"]
    assert all((tmp_path / "runs" / f"baseline_s{seed}" / "eval.json").exists() for seed in (1, 2))
    per_run, curves = study.collect(runs[:1], arms)
    metrics = per_run["baseline"][1]
    assert metrics["params"] == 1234 and metrics["text.bpb"] == 1.5  # evaluate.py's count and numbers
    assert metrics["train.steps"] == 6 and metrics["train.val_bpb"] == 1.6
    assert curves["baseline"][1] == {0: (0, 0.0, 2.0), 6: (768, 4.5, 1.6)}


def test_eta_rests_on_the_rate_after_the_first_progress():
    """Three runs compiling for 150 s, then 100 steps every 10 s: the ETA must not count compilation
    as training (it said 60 minutes where 3 were left)."""
    assert study.minutes_left(None, 150.0, 0, 3150) is None  # nothing done yet
    first = (150.0, 150)  # the first progress seen
    assert study.minutes_left(first, 150.0, 150, 3150) is None  # no rate yet
    assert study.minutes_left(first, 160.0, 250, 3150) == pytest.approx(2900 / 100 * 10 / 60)


def test_a_job_that_ran_out_of_gpu_memory_runs_again(tmp_path, capsys):
    """A job that died out of GPU memory runs again (retry_cmd, appending to its log) once fewer jobs
    run; it counts as failed only after OOM_RETRIES more failures. Any other failure is final."""
    script = ("import os, sys; n = int(open(sys.argv[1]).read()) if os.path.exists(sys.argv[1]) else 0; "
              "open(sys.argv[1], 'w').write(str(n + 1)); print('attempt', n + 1, sys.argv[2:]); "
              "sys.exit(0 if n + 1 >= int(sys.argv[2]) else (print(sys.argv[3]) or 1))")
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.07 GiB."

    def job(name, succeeds_on, error):
        count, log = str(tmp_path / f"{name}.count"), str(tmp_path / f"{name}.log")
        cmd = [sys.executable, "-c", script, count, str(succeeds_on), error]
        return dict(name=name, cmd=cmd, retry_cmd=cmd + ["--init_from=auto"], log=log, mode="w",
                    units=lambda: (0, 1))

    jobs = [job("oom_once", 2, oom), job("oom_always", 99, oom), job("other", 2, "ValueError: bad")]
    assert study.run_jobs(jobs, 3, "train") == ["other", "oom_always"]
    attempts = {name: int((tmp_path / f"{name}.count").read_text()) for name in ("oom_once", "oom_always", "other")}
    assert attempts == {"oom_once": 2, "oom_always": 1 + study.OOM_RETRIES, "other": 1}
    log = (tmp_path / "oom_once.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log and "--init_from=auto" in log  # kept, then appended
    assert "oom_once: out of GPU memory: it will run again" in capsys.readouterr().out


def write_arms(d, dataset, tokenizer):
    base = d / "base" / "tiny.py"
    base.parent.mkdir()
    settings = dict(TINY, data_dir=dataset, tokenizer=tokenizer)
    base.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    bodies = {"baseline": "streams = []", "bytes": f"streams = [{BYTES!r}]",
              "baseline_time": "streams = []\n_match_time_of = 'bytes'",
              "broken": "streams = []\nblock_size = 10**6",  # train.py fails: the data has fewer tokens
              "typo": "no_such_option = 1"}                   # the config itself fails
    for name, body in bodies.items():
        (d / f"{name}.py").write_text(f"exec(open({str(base)!r}).read())\n{body}\n")
    return {name: str(d / f"{name}.py") for name in bodies}


def test_wall_clock_ratio_measured_once_by_bench(dataset, toks, tmp_path, capsys):
    paths = write_arms(tmp_path, dataset, toks["bpe300"].spec)
    args = study.parse_args([paths["baseline"], paths["bytes"], paths["baseline_time"], f"--out={tmp_path}"])
    arms = study.load_arms(args)
    assert arms["baseline_time"]["match"] == "bytes" and arms["bytes"]["match"] is None
    ratios = study.time_ratios(args, arms)
    ms = [row["ms"] for row in json.load(open(tmp_path / "bench_baseline_time.json"))["rows"]]
    assert set(ratios) == {"baseline_time"}
    assert ratios["baseline_time"]["ratio"] == pytest.approx(ms[0] / ms[1])
    assert json.load(open(tmp_path / "time_match.json")) == ratios
    runs = {r["name"]: r for r in study.plan_runs(args, arms, ratios)}
    assert runs["baseline_time_s1"]["steps"] == round(6 * ms[0] / ms[1]) and runs["bytes_s1"]["steps"] == 6
    capsys.readouterr()
    assert study.time_ratios(args, arms) == ratios and "bench.py" not in capsys.readouterr().out  # kept


def test_wall_clock_matching_chains_and_refuses_circles():
    arm = lambda match=None, steps=1000: dict(match=match, cfg=dict(max_iters=steps), error=None)
    arms = dict(bytes=arm(), baseline_time=arm("bytes"), every3_time=arm("baseline_time"))
    ratios = dict(baseline_time=dict(ratio=1.139), every3_time=dict(ratio=1 / 1.09))
    # every3_time trains as long as baseline_time's 1,139 steps take, not as long as 1,000
    assert study.arm_steps("every3_time", arms, ratios) == pytest.approx(1139 / 1.09)
    assert study.arm_steps("every3_time", arms, {"every3_time": ratios["every3_time"]}) is None
    arms["bytes"] = arm("every3_time")
    with pytest.raises(SystemExit, match="in a circle"):
        study.arm_steps("every3_time", arms, ratios)


def run_study(arms, out, *extra):
    cmd = [sys.executable, "-m", "lab.study", *arms, "--seeds=2", f"--out={out}", "--parallel=2",
           f"--eval_args={EVAL}", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_study_end_to_end(dataset, toks, tmp_path):
    arms = write_arms(tmp_path, dataset, toks["bpe300"].spec)
    out = tmp_path / "study"
    (tmp_path / "text2.txt").write_text(PLAIN * 3)
    # a step-time ratio measured earlier (test_wall_clock_ratio_measured_once_by_bench measures one)
    out.mkdir()
    (out / "time_match.json").write_text(json.dumps({"baseline_time": dict(matched_to="bytes", ratio=1.5)}))
    # bytes, seed 2, was interrupted at step 3 (it has a checkpoint there): the study resumes it
    run_inprocess([arms["bytes"], "--seed=2", f"--out_dir={out}/runs/bytes_s2", "--max_iters=3"])
    r = run_study(list(arms.values()), out, f"--text2={tmp_path / 'text2.txt'}")
    assert r.returncode == 1, r.stdout + r.stderr  # two arms failed, the rest is summarised
    assert "arms with failed runs: broken, typo" in r.stderr
    assert "unknown config key 'no_such_option'" in r.stderr
    assert "too few for block_size" in r.stderr  # train.py's own message, from the run's log
    assert "resumed from" in (out / "runs" / "bytes_s2" / "train.log").read_text()

    summary = json.load(open(out / "summary.json"))
    assert set(summary["arms"]) == {"baseline", "bytes", "baseline_time"}
    settings = summary["settings"]
    assert len(settings["failed"]) == 4 and settings["arms"]["bytes"]["config"]["max_iters"] == 6
    base = summary["arms"]["baseline"]
    for name in ("train.val_bpb", "train.minutes", "train.tok_s", "params", "text.bpb", "tasks.spell.acc",
                 "noise.kinds.swap.delta", "segmentation.rates.0.5.delta", "tasks.mean.acc", "text2.bpb",
                 "noise2.kinds.swap.delta", "segmentation2.rates.0.5.delta"):
        assert name in base, name
    assert "branch.streams.bytes.delta.text_bpb" in summary["arms"]["bytes"]  # evaluate.py's branch usage
    for arm, entry in summary["arms"].items():
        assert entry["seeds"] == [1, 2]
        for name, m in entry.items():
            if name == "seeds":
                continue
            assert m["mean"] == pytest.approx(statistics.fmean(m["values"])), (arm, name)
            assert m["sd"] == pytest.approx(statistics.stdev(m["values"])), (arm, name)
            if arm != "baseline" and name not in base:  # e.g. branch usage: byte arms only
                assert "vs_baseline" not in m
            elif arm != "baseline":
                diffs = [a - b for a, b in zip(m["values"], base[name]["values"])]
                mean, half = statistics.fmean(diffs), 12.706 * statistics.stdev(diffs) / math.sqrt(2)
                v = m["vs_baseline"]
                assert v["mean"] == pytest.approx(mean)
                assert v["ci95"] == pytest.approx([mean - half, mean + half])
    assert summary["arms"]["bytes"]["params"]["mean"] > base["params"]["mean"]
    assert summary["arms"]["bytes"]["train.steps"]["values"] == [6, 6]
    # wall-clock matching: max_iters 6 scaled by the step-time ratio 1.5
    assert summary["arms"]["baseline_time"]["train.steps"]["values"] == [9, 9]
    assert torch.load(out / "runs" / "baseline_time_s1" / "ckpt.pt", weights_only=True)["step"] == 9
    table = (out / "summary.md").read_text()
    assert "| metric | baseline | bytes | baseline_time |" in table and "| train.val_bpb | " in table
    assert "| metric | bytes − baseline | baseline_time − baseline |" in table
    assert "FAILED: typo_s1" in table
    assert "trained on: baseline cpu; bytes cpu; baseline_time cpu" in table  # each arm's machine, from its log
    plots = [(out / f).exists() for f in ("curves.png", "noise.png", "tasks.png")]
    assert all(plots) if importlib.util.find_spec("matplotlib") else not any(plots)  # an optional extra

    # the same command again: every run and evaluation is done, nothing is run; the summary is the same
    logs = {p: os.path.getmtime(p) for p in out.glob("runs/*/*.json*")}
    assert len(logs) == 12  # log.jsonl and eval.json of 6 runs
    valid = [arms["baseline"], arms["bytes"], arms["baseline_time"]]
    r = run_study(valid, out, f"--text2={tmp_path / 'text2.txt'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$ " not in r.stdout and "train " not in r.stdout and "evaluate " not in r.stdout, r.stdout
    assert logs == {p: os.path.getmtime(p) for p in out.glob("runs/*/*.json*")}
    again = json.load(open(out / "summary.json"))
    assert again["arms"]["bytes"] == summary["arms"]["bytes"] and again["settings"]["failed"] == []

    # the results copied without the checkpoints (tar --exclude='*.pt'): still nothing is run, the same summary
    for ckpt in out.glob("runs/*/ckpt.pt"):
        ckpt.unlink()
    r = run_study(valid, out, f"--text2={tmp_path / 'text2.txt'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$ " not in r.stdout and "train " not in r.stdout and "evaluate " not in r.stdout, r.stdout
    assert logs == {p: os.path.getmtime(p) for p in out.glob("runs/*/*.json*")}
    assert json.load(open(out / "summary.json"))["arms"] == again["arms"]  # params: evaluate.py's count
