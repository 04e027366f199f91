"""Side streams mixed by a gated linear recurrence (mixer="recurrent") instead of self-attention: the scan
is the recurrence, and it restarts at every window, so that packing changes nothing. (Its causality is
tested with every other variation, in test_causality.py.)"""
import numpy as np
import pytest
import torch

from conftest import args, run_inprocess, val_losses
from model import GPTConfig, Recurrence, linear_scan
from test_model import BYTES, TEXT, batch_for, make, randomize_cross, spread_starts

RECURRENT = dict(BYTES, mixer="recurrent")
VARIANTS = {
    "layer0": [RECURRENT],
    "two_layers": [dict(RECURRENT, n_layer=2)],
    "all_layers": [dict(RECURRENT, cross_layers="all")],
    "local0": [dict(RECURRENT, locality=0)],
    "overflow": [dict(RECURRENT, budget=128)],
    "two_streams": [RECURRENT, dict(BYTES, tokenizer="bpe400", budget=128, cross_layers=[1], locality=1)],
}


def loop_reference(r, x, reset):
    """The recurrence step by step, as written: h_t = (1 - z_t) * h_{t-1} + z_t * h~_t, h = 0 at a reset."""
    k, h_new = r.zh(x).chunk(2, dim=-1)
    z = torch.sigmoid(k)
    h, out = torch.zeros_like(x[:, 0]), []
    for t in range(x.size(1)):
        h = torch.where(reset[:, t, None], 0.0, h)
        h = (1 - z[:, t]) * h + z[:, t] * h_new[:, t]
        out.append(h)
    return r.proj(torch.stack(out, 1))


def test_scan_equals_a_step_by_step_loop():
    torch.manual_seed(0)
    r = Recurrence(16)
    torch.nn.init.normal_(r.zh.weight, std=0.5)  # gates far from 1/2: fast and slow decays
    x = torch.randn(3, 80, 16)
    reset = torch.rand(3, 80) < 0.1
    reset[0, 0], reset[1] = True, False  # row 1: no reset at all
    with torch.no_grad():
        ref = loop_reference(r, x, reset)
        assert torch.allclose(r(x, reset), ref, atol=1e-6), (r(x, reset) - ref).abs().max()
        assert not torch.allclose(r(x, torch.zeros_like(reset)), ref, atol=1e-3), "the resets must matter"
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: the scan itself stays exact
            out = r(x, reset)
        assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=3e-2)


def test_scan_equals_the_loop_over_a_long_row():
    """Recursive doubling over 8K elements (14 steps; a packed row of 131K takes 17). Slow decays (gates
    near 0) carry state over thousands of elements, where rounding in the decay products would show."""
    torch.manual_seed(0)
    r = Recurrence(4)
    with torch.no_grad():
        r.zh.weight.normal_(std=0.5)
        r.zh.weight[:4] = -r.zh.weight[:4].abs() - 1.0  # z rows: positive inputs give z ~ e^-6
    x = torch.randn(2, 8192 + 37, 4)  # not a power of 2
    x[1] = x[1].abs() + 0.5  # row 1: decays near 1, a memory of hundreds to thousands of elements
    reset = torch.rand(x.shape[:2]) < 1e-3
    reset[1], reset[1, 3000] = False, True  # row 1: one reset, then 5K elements that need every step
    with torch.no_grad():
        assert torch.sigmoid(r.zh(x[1])[:, :4]).mean() < 0.01 and reset[0].sum() > 3
        ref = loop_reference(r, x, reset)
        assert torch.allclose(r(x, reset), ref, rtol=1e-5, atol=1e-5), (r(x, reset) - ref).abs().max()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 1000])
def test_scan_and_its_gradients_at_any_length(n):
    """Lengths that are not powers of 2, down to 1 (no doubling step at all); forward and backward."""
    torch.manual_seed(n)
    a, b = torch.rand(2, n, 3), torch.randn(2, n, 3)
    a[:, n // 2] = 0  # a reset mid-row
    a, b = a.requires_grad_(), b.requires_grad_()
    h, ref = torch.zeros(2, 3), []
    for t in range(n):
        h = a[:, t] * h + b[:, t]
        ref.append(h)
    ref = torch.stack(ref, 1)
    out = linear_scan(a, b)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    # its own backward (the scan run backwards) against autograd through the loop
    w = torch.randn_like(ref)
    got, want = (torch.autograd.grad((t * w).sum(), (a, b)) for t in (out, ref))
    for g, r in zip(got, want):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-5), (g - r).abs().max()


def test_mixer_option_is_checked():
    with pytest.raises(ValueError, match="mixer must be 'attention', 'recurrent' or 'conv'"):
        GPTConfig(n_layer=2, n_head=2, n_embd=32, streams=[dict(BYTES, mixer="rnn")])


def packing_error(toks, streams, attention):
    """Largest difference, at positions kept in the loss, between packed and unpacked windows (cut: 0.3)."""
    m = make(toks, streams=streams, T=100)
    randomize_cross(m)
    m.attention = attention
    starts = spread_starts(toks) + (11,)
    with torch.no_grad():
        ref = m(**batch_for(toks, m, TEXT, starts=starts))[0]
        m.config.streams = [type(sc)(**dict(vars(sc), packed_budget=int(sc.budget * 0.3)))
                            for sc in m.config.streams]
        x = batch_for(toks, m, TEXT, starts=starts, pack=True)
        kept = x["targets"] >= 0
        assert x["sides"][0]["ids"].size(0) == 1 and kept.sum() > 50, "windows must share a row"
        return (ref[kept] - m(**x)[0][kept]).abs().max()


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packing_changes_nothing_but_the_cut_tokens(toks, variant, attention):
    assert packing_error(toks, VARIANTS[variant], attention) < 2e-5


def test_packing_without_resets_would_leak(toks, monkeypatch):
    """The check above has teeth: a recurrence that does not restart carries one window into the next."""
    scan = Recurrence.forward
    monkeypatch.setattr(Recurrence, "forward", lambda self, x, reset: scan(self, x, torch.zeros_like(reset)))
    assert packing_error(toks, VARIANTS["layer0"], "sdpa") > 1e-3


def test_param_counts_and_flops(toks):
    att, rec = make(toks, streams=[dict(BYTES, n_layer=2)]), make(toks, streams=[dict(RECURRENT, n_layer=2)])
    counts = rec.param_counts()
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    assert counts["total"] == sum(p.numel() for p in rec.parameters())
    sc = att.config.streams[0]
    fewer = sc.n_layer * sc.n_embd ** 2  # W_z, W_h, W_o against W_q, W_k, W_v, W_o
    assert counts["stream:bytes"] == att.param_counts()["stream:bytes"] - fewer
    per_token = sc.budget / att.config.block_size
    attention_term = per_token * 12 * sc.n_layer * sc.n_embd * min(sc.window, sc.budget)
    expected = att.flops_per_token() - attention_term - per_token * 6 * fewer
    assert rec.flops_per_token() == pytest.approx(expected)


def test_training_with_a_recurrent_stream(dataset, toks, tmp_path):
    stream = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=16, budget=96, packed_budget=64,
                  mixer="recurrent")
    run_inprocess(args(dataset, toks, tmp_path / "rec", streams=[stream], max_iters=12, eval_interval=6))
    losses = val_losses(tmp_path / "rec")
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
