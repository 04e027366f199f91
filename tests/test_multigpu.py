"""lab/multigpu.py end to end on CPU: 2 gloo processes under torchrun against 1, tiny runs. Equivalence,
resume after SIGTERM, a SIGKILLed worker and its auto-resume, and the scaling numbers (no target on CPU)."""
import ast
import json
import os

from conftest import args
from lab import multigpu


def test_multigpu_proof_on_cpu(dataset, toks, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 processes (and torchrun) share the cores
    config = tmp_path / "tiny.py"  # the tiny run of the training tests, as a config file
    lines = []
    for a in args(dataset, toks, tmp_path / "unused", total_batch_size=256):
        key, value = a[2:].split("=", 1)
        if key != "out_dir":
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass  # a string
            lines.append(f"{key} = {value!r}")
    config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "proof"
    status = multigpu.main([str(config), "--nproc=2", f"--out={out}", "--steps=40", "--eval_interval=10",
                            "--log_interval=1", "--scaling_steps=8", "--warm=2"])
    summary = json.load(open(out / "summary.json"))
    phases = summary["phases"]
    assert set(phases) == set(multigpu.PHASES) and all("verdict" in p for p in phases.values())
    eq = phases["equivalence"]
    assert eq["verdict"] == "pass" and eq["dtype"] == "float32", eq
    assert eq["logged_steps"] == 40 and eq["max_abs_dloss"] <= 1e-5 and eq["abs_dval_bpb"] <= 1e-5
    res = phases["resume"]
    assert res["verdict"] == "pass", res
    assert 20 <= res["stopped_at_step"] == res["checkpoint_step"] < 40  # SIGTERM once step 20 was logged
    assert res["compared_steps"] == 40 and res["max_abs_dloss"] <= 1e-5 and res["last_step"] == 40
    fail = phases["failure"]
    assert fail["torchrun_exit"] not in (None, 0) and fail["seconds_to_exit"] < 60, fail
    assert any("SIGKILL" in line for line in fail["message"]), fail["message"]
    assert fail["resumed_from_step"] >= 10 and fail["last_step"] == 40 and fail["verdict"] == "pass", fail
    rows = phases["scaling"]["configs"]["tiny"]  # numbers only: 2 processes on a CPU's cores scale poorly
    assert rows["tok_s_1proc"] > 0 and rows["tok_s_nproc"] > 0 and rows["efficiency"] > 0
    assert phases["scaling"]["verdict"] == "n/a" and status == 0
    assert "| failure | PASS |" in (out / "summary.md").read_text()
    assert (out / "multigpu.tar.gz").exists()
    assert os.path.exists(out / "runs" / "failure_2proc" / "train_auto.log")
