"""bench.py on CPU: it times real steps of each config and says clearly when the data cannot fill a batch."""
import hashlib
import math
import os
import sys

import pytest

from conftest import ROOT, args

sys.path.insert(0, ROOT)
import bench  # noqa: E402


def test_bench_times_each_config(dataset, toks, tmp_path, capsys):
    with_bytes, plain = tmp_path / "bytes.py", tmp_path / "plain.py"
    with_bytes.write_text("streams = [dict(tokenizer='bytes', n_layer=1, n_head=2, n_embd=32, window=16, budget=96)]\n")
    plain.write_text("streams = []\n")
    over = [a for a in args(dataset, toks, tmp_path / "out") if not a.startswith("--streams=")]
    rows = bench.main([str(with_bytes), str(plain), "--steps=2", f"--profile={tmp_path / 'prof'}"] + over)
    b, p = rows
    assert b["tokens"] == p["tokens"] == 4 * 32  # batch_size x block_size
    assert all(r["ms"] > 0 and math.isclose(r["tok_s"], r["tokens"] / r["ms"] * 1000) for r in rows)
    assert all(r["ms_pipelined"] > 0 for r in rows)
    assert b["params"] > p["params"] and b["gflop_per_token"] > p["gflop_per_token"]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert str(with_bytes) in table and str(plain) in table and "ms/step" in table
    for name in ("bytes", "plain"):  # --profile: a kernel table per config
        profile = (tmp_path / "prof" / f"{name}.txt").read_text()
        assert profile.startswith("5 steps") and "aten::mm" in profile and "Self CPU" in profile
        summary = profile[profile.index("by kind:"):]
        matmul = next(line for line in summary.splitlines() if line.startswith("| matmul |"))
        assert float(matmul.split("|")[2]) > 0  # every operator summed, by kind
        assert "| all |" in summary and "| timed step (median, no profiler) |" in summary


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "matmul"),
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention"),
    ("void cudnn::fusion::compute_dot_do_o_specialized<true, 64>", "attention"),
    ("triton_tem_fused_flex_attention_backward_transpose_view_36", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("_own_fwd", "attention"), ("_own_bwd", "attention"),  # kernels.py: reading each token's own bytes
    ("bytecross::own_attention_backward", "attention"),
    ("triton_red_fused__log_softmax__to_copy__unsafe_view_prepare_softmax_online_view_48", "loss (log-softmax)"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::FusedAdamW>", "optimizer"),
    ("triton_poi_fused__to_copy__unsafe_view_mul_pow_relu_threshold_backward_view_3", "elementwise (compiled)"),
    ("Memset (Device)", "copies and fills"), ("aten::copy_", "copies and fills"),
    ("void at::native::_scatter_gather_elementwise_kernel<128, 8>", "other"),
    ("aten::mm_backward_helper_that_does_not_exist", "other"),
])
def test_profile_kinds(name, kind):
    """The profile's summary sorts kernel names as the README reads them: a fused triton kernel holding the
    loss is the loss, not elementwise work; cuDNN and flex kernels are attention; a compiled copy is compute."""
    assert bench.kind_of(name) == kind


def test_bench_refuses_a_batch_larger_than_the_data(dataset, toks, tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("streams = []\n")
    over = [a for a in args(dataset, toks, tmp_path / "out") if not a.startswith("--batch_size=")]
    with pytest.raises(SystemExit, match="fewer than batch_size"):
        bench.main([str(cfg), "--batch_size=100000", "--steps=1"] + over)


def test_bench_keeps_going_past_a_failing_config_and_times_the_anchor(dataset, toks, tmp_path, capsys):
    """One config that fails (flex attention has no backward on CPU) leaves the others' rows; the JSON is
    written after every row, with the anchor's row (here a stand-in script printing one JSON line)."""
    import json
    flex, plain, anchor = tmp_path / "flex.py", tmp_path / "plain.py", tmp_path / "anchor.py"
    flex.write_text("attention = 'flex'\ncompile = False\n")
    plain.write_text("streams = []\n")
    anchor.write_text("import json\nprint('warming up')\nprint(json.dumps(dict(config='nanoGPT 124M (anchor)', "
                      "ms=10.0, tok_s=12800.0, mfu=None, params=124000000, warmup_s=1.0)))\n")
    out = tmp_path / "speed.json"
    over = [a for a in args(dataset, toks, tmp_path / "out") if not a.startswith(("--streams=", "--compile="))]
    flex.write_text(flex.read_text() + "streams = [dict(tokenizer='bytes', n_layer=1, n_head=2, n_embd=32, budget=96)]\n")
    rows = bench.main([str(flex), str(plain), "--steps=1", f"--anchor={anchor}", f"--json={out}"] + over)
    assert "error" in rows[0] and "backward" in rows[0]["error"] and rows[1]["ms"] > 0
    saved = json.loads(out.read_text())
    assert saved["anchor"]["ms"] == 10.0 and [r["config"] for r in saved["rows"]] == [str(flex), str(plain)]
    # what ran: each row's settings, and the code by content
    assert saved["rows"][0]["settings"]["attention"] == "flex" and saved["rows"][1]["settings"]["streams"] == []
    with open(os.path.join(ROOT, "model.py"), "rb") as f:
        assert saved["code"]["model.py"] == hashlib.sha256(f.read()).hexdigest()[:12]
    table = capsys.readouterr().out
    assert "vs anchor" in table and "failed: NotImplementedError" in table
    assert all(line.startswith("|") for line in table[table.index("| config"):].strip().splitlines())  # one line a row
    assert f"{rows[1]['ms'] / 10.0:.3f}x" in table


def test_profile_counts_each_gpu_kernel_once():
    """On the GPU only kernels count: not the operators that launched them, nor a GPU-side annotation
    (Optimizer.step) that spans kernels already counted. The summary's total is their sum."""
    from types import SimpleNamespace as E
    from torch.autograd import DeviceType
    events = [E(key="aten::mm", device_type=DeviceType.CPU, is_user_annotation=False, self_device_time_total=0.0, self_cpu_time_total=30.0),
              E(key="nvjet_sm90_tst_256x128", device_type=DeviceType.CUDA, is_user_annotation=False, self_device_time_total=4000.0, self_cpu_time_total=0.0),
              E(key="Optimizer.step#AdamW.step", device_type=DeviceType.CUDA, is_user_annotation=True, self_device_time_total=900.0, self_cpu_time_total=0.0),
              E(key="triton_poi_fused_add_1", device_type=DeviceType.CUDA, is_user_annotation=False, self_device_time_total=1000.0, self_cpu_time_total=0.0)]
    times = bench.self_times(events, cuda=True)
    assert [name for name, _ in times] == ["nvjet_sm90_tst_256x128", "triton_poi_fused_add_1"]
    summary = bench.by_kind(times, steps=5, step_ms=1.5)
    assert "| matmul | 0.80 | 80% |" in summary and "| all | 1.00 | 100% |" in summary
    assert "| step minus all: idle or outside these | 0.50 |" in summary
    assert [name for name, _ in bench.self_times(events, cuda=False)] == ["aten::mm"]
