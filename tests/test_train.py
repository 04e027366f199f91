"""train.py end to end on CPU: learning, exact resume after an interrupt, DDP, and clear errors."""
import json
import glob
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, args, run_inprocess, tiny_bpe, val_losses, weights

sys.path.insert(0, ROOT)
import train  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

def test_training_lowers_val_loss(trained):
    losses = val_losses(trained)
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 1.5, losses


def curve(out_dir):
    """{step: train loss} and {step: (val loss, val bpb)} from a run's log.jsonl (a resumed run appends)."""
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return ({r["step"]: r["loss"] for r in records if "loss" in r},
            {r["step"]: (r["val_loss"], r["val_bpb"]) for r in records if "val_loss" in r})


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]], ids=["ctrl-c", "sigterm-twice"])
def test_resume_after_interrupt_matches_uninterrupted(dataset, toks, tmp_path, monkeypatch, capsys, signals):
    """Ctrl-C (or SIGTERM, even repeated) mid-run writes a checkpoint; --init_from=resume then continues the
    very same loss curve and ends with the very same weights. The signals are real, sent to this process
    while train.py runs in it (a subprocess spends seconds importing torch, on a loaded machine minutes)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    short = dict(max_iters=10, eval_interval=5)  # the stop falls between evaluations
    run_inprocess(args(dataset, toks, full, **short))

    def print_and_signal(*a, **k):  # train.py's print: signals when a run would get them
        print(*a, **k)
        if str(a[0]).startswith("step 3/"):
            os.kill(os.getpid(), signals[0])
        if "finishing this step" in str(a[0]):  # the first signal was handled: now any repeats
            for sig in signals[1:]:
                os.kill(os.getpid(), sig)

    def unhandled(signum, frame):  # rather than ending pytest itself
        raise AssertionError(f"train.py did not handle {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, unhandled) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with monkeypatch.context() as m, pytest.raises(SystemExit) as exited:
            m.setattr(train, "print", print_and_signal, raising=False)
            run_inprocess(args(dataset, toks, cut, **short))
    except KeyboardInterrupt:  # would end pytest itself
        pytest.fail("train.py raised KeyboardInterrupt instead of finishing the step and saving")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log = capsys.readouterr().out
    stopped = int(log.split("stopped at step ")[1].split(";")[0])
    assert 3 <= stopped < 10, log
    assert exited.value.code == 128 + signals[0], "a stopped run exits with 128 + the signal's number"
    run_inprocess([f"--out_dir={cut}", "--init_from=resume"])
    assert curve(cut) == curve(full), "the resumed loss curve differs from the uninterrupted one"
    a, b = weights(full), weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


def test_ddp_two_processes_match_one(dataset, toks, tmp_path):
    """torchrun with 2 CPU processes (gloo), 2 windows each, equals 1 process with 2 micro-steps of 2."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = dict(batch_size=2, total_batch_size=128, max_iters=3, eval_interval=100)
    run_inprocess(args(dataset, toks, single, **common))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    r = subprocess.run(cmd + args(dataset, toks, ddp, **common), cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 process(es)" in r.stdout
    a, b = weights(single), weights(ddp)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    ckpt = torch.load(os.path.join(single, "ckpt.pt"), weights_only=True)
    torch.manual_seed(ckpt["config"]["seed"])  # the initialization both runs started from
    init = GPT(GPTConfig(**ckpt["model_config"])).state_dict()
    assert not torch.equal(init["blocks.0.attn.q.weight"], a["blocks.0.attn.q.weight"]), "no training happened"


def expect_exit(argv, *fragments):
    with pytest.raises(SystemExit) as e:
        run_inprocess(argv)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_clear_errors(dataset, toks, trained, tmp_path):
    expect_exit(args(dataset, toks, tmp_path / "a") + ["--n_layers=3"], "unknown config key 'n_layers'",
                "n_layer")  # the message lists the valid keys
    expect_exit(args(dataset, toks, tmp_path / "a", max_iters="many"), "max_iters='many'", "int")
    expect_exit(args(dataset, toks, tmp_path / "a", compile_mode="fast"), "compile_mode='fast'",
                "'reduce-overhead'")
    expect_exit(args(dataset, toks, tmp_path / "a", data_dir=str(tmp_path / "nowhere")), "does not exist",
                "prepare.py")
    expect_exit(args(dataset, toks, tmp_path / "a", tokenizer=toks["bpe400"].spec), "no main stream", "bpe400")
    other = tiny_bpe(str(tmp_path / "bpe300.tiktoken"), 300, texts=["another text, other merges " * 20])
    expect_exit(args(dataset, toks, tmp_path / "a", tokenizer=other.spec), "prepared with tokenizer",
                "fingerprint")  # same name, other merges
    expect_exit(args(dataset, toks, tmp_path / "a", block_size=100000), "too few for block_size")
    expect_exit(args(dataset, toks, tmp_path / "a", total_batch_size=100), "not a multiple")
    expect_exit(args(dataset, toks, tmp_path / "a", attention="flex",
                     streams=[dict(tokenizer="bytes", n_layer=1, n_head=4, n_embd=32)]), "at least 16")
    expect_exit(args(dataset, toks, tmp_path / "a", streams=[dict(tokenizer="bytes", layers=[0])]),
                "unknown stream option", "cross_layers")
    expect_exit(args(dataset, toks, trained), "exists", "--init_from=resume")  # would overwrite a run
    expect_exit([f"--out_dir={trained}", "--init_from=resume", "--n_embd=64"], "different architecture", "n_embd")
    expect_exit([f"--out_dir={tmp_path / 'none'}", "--init_from=resume"], "does not exist")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(b"half a checkpoint")
    expect_exit([f"--out_dir={tmp_path / 'bad'}", "--init_from=resume"], "not a readable checkpoint")


def test_config_files_and_overrides(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("n_layer = 3\nstreams = []\n_helper = 5\n")
    cfg, given = train.parse_config([str(f), "--n_layer=4", "--learning_rate=1e-3", "--compile=False"])
    assert cfg["n_layer"] == 4 and cfg["streams"] == [] and cfg["compile"] is False
    assert given == {"n_layer", "streams", "learning_rate", "compile"}
    shipped = glob.glob(os.path.join(ROOT, "config", "**", "*.py"), recursive=True)
    assert len(shipped) > 20
    cwd = os.getcwd()
    os.chdir(ROOT)  # configs exec their base configs by paths relative to the repository
    try:
        for path in shipped:  # every shipped config parses and validates
            train.validate(train.parse_config([path])[0])
        # train.py's defaults are config/bytes.py's model, as both say
        default = train.parse_config([os.path.join("config", "bytes.py")])[0]
        for key in ("tokenizer", "block_size", "n_layer", "n_head", "n_embd", "streams"):
            assert default[key] == train.DEFAULTS[key], key
    finally:
        os.chdir(cwd)


def test_eta_leaves_out_each_runs_first_interval(monkeypatch):
    """The first log interval of a run, fresh or resumed, includes compilation: the ETA rests on the
    intervals after it."""
    clock = iter([0.0, 100.0, 100.0, 101.0, 101.0])  # Meter(), then two laps of 10 steps (each reads it twice)
    monkeypatch.setattr(train.time, "time", lambda: next(clock))
    meter = train.Meter(step=500, n_side=0)  # a resumed run
    assert meter.lap(510) == (10.0, 10.0)  # compiling: nothing else to go on yet
    assert meter.lap(520) == (0.1, 0.1)  # from now on, only the warm steps count


def test_float32_means_float32():
    """TF32 matmuls only under bf16 autocast: dtype=float32 must compute in float32 on a GPU too."""
    cfg = dict(train.DEFAULTS, device="cpu")
    train.start_runtime(dict(cfg, dtype="float32"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_compiling_uses_static_shapes(monkeypatch):
    """torch.compile(dynamic=False), for training and bench.py alike: evaluation and training
    batches each get their own static graph (automatic dynamic shapes recompiled the training
    graph with symbolic sizes after the step-0 evaluation)."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    model = torch.nn.Linear(2, 2)
    assert train.compile_model(model) is model
    rt = train.Runtime(ddp=False, rank=0, local_rank=0, world=1, device="cpu", device_type="cpu",
                       dtype="float32", use_compile=True, attention="flex", autocast=None,
                       peak_flops=None)
    assert train.compile_and_wrap(model, rt) is model
    assert calls == [dict(dynamic=False)] * 2
    # compile_mode passes through (CUDA graphs: 'reduce-overhead'); 'default' adds no mode
    assert train.compile_and_wrap(model, rt, "reduce-overhead") is model
    assert calls[-1] == dict(dynamic=False, mode="reduce-overhead")


def test_each_model_call_under_cuda_graphs_starts_a_new_step(monkeypatch):
    """With CUDA graphs, a replay may overwrite the previous call's outputs: train.py and bench.py
    mark a new step before every model call, and only then."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode, expected in (("default", 0), ("max-autotune-no-cudagraphs", 0),
                           ("reduce-overhead", 1), ("max-autotune", 1)):
        marks.clear()
        train.new_graph_step(mode)
        assert len(marks) == expected, mode


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_only_flex_training_packs_side_streams(dataset, toks, tmp_path, attention):
    """pack='auto': training packs side streams into one row under flex attention only, as SDPA's
    dense masks would grow with the square of a packed row. (set_up on CPU, as train.main calls
    it.)"""
    cfg, _ = train.parse_config(args(dataset, toks, tmp_path / "run", attention=attention,
                                     pack="auto"))
    train.validate(cfg)
    run = train.set_up(cfg, train.start_runtime(cfg), None)
    assert run.rt.attention == attention
    flex = attention == "flex"
    assert run.train_batches.pack == flex
    B = cfg["batch_size"]
    batch = run.train_batches.get(run.train_batches.positions(0, B))
    stream = cfg["streams"][0]
    rows = (1, B * stream["packed_budget"]) if flex else (B, stream["budget"])
    assert batch["sides"][0]["ids"].shape == rows


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_own_kernel_auto_means_flex_on_a_gpu_with_triton(dataset, toks, tmp_path, attention, monkeypatch):
    """own_kernel='auto' (the default): kernels.py reads each token's own bytes under flex on a GPU
    when Triton is installed, the PyTorch path otherwise (a CPU, SDPA, no Triton); False always
    means the PyTorch path; anything but True, False or 'auto' is refused by name."""
    import attention as attention_module
    from runtime import own_kernel
    cfg, _ = train.parse_config(args(dataset, toks, tmp_path / "run", attention=attention))
    train.validate(cfg)
    assert cfg["own_kernel"] == "auto"
    model, _ = train.build_model(cfg, train.model_setup(cfg)[2], "cpu", attention)
    assert model.own_kernel is False  # a CPU, whatever the attention
    monkeypatch.setattr(attention_module, "kernels", object())  # Triton there
    assert own_kernel("auto", attention, "cuda") is (attention == "flex")
    assert own_kernel(False, attention, "cuda") is False and own_kernel(True, "flex", "cpu") is True
    monkeypatch.setattr(attention_module, "kernels", None)  # no Triton
    assert own_kernel("auto", attention, "cuda") is False
    expect_exit(args(dataset, toks, tmp_path / "b", own_kernel="yes"), "own_kernel='yes'", "'auto'")


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
@pytest.mark.parametrize("setting", [True, False])
def test_chunked_windows_run_only_under_flex(dataset, toks, tmp_path, attention, setting):
    """chunked_windows=True computes side streams' sliding windows chunk by chunk where flex runs;
    SDPA, the reference, always uses its dense masks; anything but True or False is refused by name."""
    cfg, _ = train.parse_config(args(dataset, toks, tmp_path / "run", attention=attention,
                                     chunked_windows=setting))
    train.validate(cfg)
    model, _ = train.build_model(cfg, train.model_setup(cfg)[2], "cpu", attention)
    assert model.chunked_windows is (attention == "flex" and setting)
    expect_exit(args(dataset, toks, tmp_path / "b", chunked_windows="auto"), "chunked_windows='auto'", "True or False")


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_optimizer_step_clips_only_when_asked(grad_clip):
    """grad_clip 0 means no clipping (train.py and bench.py step through the same function)."""
    layer = torch.nn.Linear(4, 4, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    before = layer.weight.detach().clone()
    (1000 * layer(torch.ones(1, 4)).sum()).backward()
    grad = layer.weight.grad.clone()
    norm = train.optimizer_step(layer, optimizer, grad_clip)
    assert torch.isclose(norm, grad.norm()) and norm > 100
    scale = 1.0 if grad_clip == 0 else grad_clip / norm
    assert torch.allclose(layer.weight, before - scale * grad, rtol=1e-4)
    assert layer.weight.grad is None
