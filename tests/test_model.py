"""The model: plain-GPT equivalence, the two attention paths, accounting."""
import random

import pytest
import torch

from conftest import HARD_DOCS, PLAIN
from attention import (attend, interval_block_lists, interval_block_mask, interval_mask, own_elements,
                       stream_block_lists)
from data import Corpus, batch_inputs, make_batch
from model import GPT, Block, GPTConfig, norm, rope


def make(toks, main="bpe300", streams=(), T=64, n_layer=2, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(tokenizer=main, vocab_size=toks[main].vocab_size, block_size=T, n_layer=n_layer, n_head=2,
                    n_embd=32, streams=[dict(s, vocab_size=toks[s["tokenizer"]].vocab_size) for s in streams])
    return GPT(cfg).eval()


def randomize_cross(model, std=0.2):
    """Cross-attention starts as a no-op (zero output projection); give it weight so that it matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".cross." in name or name.startswith("shared_kv."):
                p.normal_(0, std)


def batch_for(toks, model, text, starts=(0,), T=None, pack=False):
    c = model.config
    T = T or c.block_size
    side_toks = [toks[s.tokenizer] for s in c.streams]
    corpus = Corpus.from_bytes(text, toks[c.tokenizer], side_toks)
    entries = [(corpus, p, min(T, len(corpus.ids) - 1 - p)) for p in starts]  # short windows are padded
    return batch_inputs(make_batch(entries, side_toks, c.streams, T, pack=pack), "cpu")


TEXT = ("\xff".join(HARD_DOCS + [PLAIN])).encode().replace("\xff".encode(), b"\xff")
BYTES = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=16, budget=256, cross_layers=[0])
VARIANTS = {
    "layer0": [BYTES],
    "all_layers": [dict(BYTES, cross_layers="all")],
    "local0": [dict(BYTES, locality=0)],
    "local2": [dict(BYTES, locality=2)],
    "overflow": [dict(BYTES, budget=128)],  # fewer bytes than the window's tokens hold
    "bpe_side": [dict(BYTES, tokenizer="bpe400", budget=128)],
    "two_streams": [BYTES, dict(BYTES, tokenizer="bpe400", budget=128, cross_layers=[1], locality=1)],
    "shared_kv": [dict(BYTES, cross_layers="all", shared_kv=True)],  # one key/value projection, 2 layers
    "parallel": [dict(BYTES, cross_layers=[1], parallel=True),  # beside self-attention, and after it
                 dict(BYTES, tokenizer="bpe400", budget=128, cross_layers="all", locality=0)],
    # one head as wide as the stream (config/speed/*_1head*.py), read by every layer as the 1 x 128 config
    "one_head": [dict(BYTES, n_head=1, cross_layers="all", locality=0, shared_kv=True, parallel=True)],
    # a byte GPT mixing by a short convolution, read by every layer (config/speed/bytes_conv1x128_all_layers.py)
    "conv": [dict(BYTES, mixer="conv", conv_width=4, cross_layers="all", locality=0, shared_kv=True,
                  parallel=True)],
}


def test_branch_off_is_the_plain_gpt(toks):
    """Same parameters as the baseline, and (cross-attention being zero at init) the same outputs."""
    base, byte = make(toks), make(toks, streams=[BYTES])
    base_params = dict(base.named_parameters())
    shared = {n: p for n, p in byte.named_parameters() if n in base_params}
    assert set(shared) == set(base_params), "the baseline's parameters are the byte model's main parameters"
    assert sum(p.numel() for p in base.parameters()) == byte.param_counts()["embeddings"] + byte.param_counts()["main"]
    byte.load_state_dict(base.state_dict(), strict=False)
    x = batch_for(toks, byte, TEXT)
    y = {k: v for k, v in x.items() if k != "sides"}
    with torch.no_grad():
        assert torch.equal(base(**y)[0], byte(**x)[0])
        randomize_cross(byte)
        assert not torch.allclose(base(**y)[0], byte(**x)[0]), "the byte branch must be able to change outputs"


def test_cross_layers_by_name():
    """'all' and 'every<k>' name layers by the model's depth; anything else is refused."""
    def layers(spec, n_layer=12):
        cfg = GPTConfig(n_layer=n_layer, streams=[dict(tokenizer="bytes", cross_layers=spec)])
        return cfg.streams[0].cross_layers
    assert layers("every3") == [0, 3, 6, 9] and layers("every5") == [0, 5, 10] and layers("every3", 4) == [0, 3]
    assert layers("all", 3) == [0, 1, 2] == layers("every1", 3) and layers([9, 0]) == [0, 9]
    for bad in ("every0", "every", "every 3", "third", "ALL"):
        with pytest.raises(ValueError, match="every<k>"):
            layers(bad)
    with pytest.raises(ValueError, match="outside"):
        layers([12])


def test_training_logits_need_no_gradient(toks):
    """With targets, logits come detached: a compiled step otherwise zero-fills a gradient the size
    of the logits (B x T x vocab) every training step for an output that nobody reads."""
    m = make(toks, streams=[BYTES]).train()
    x = batch_for(toks, m, TEXT)
    logits, loss = m(**x)
    assert loss.requires_grad and not logits.requires_grad
    assert m(**dict(x, targets=None))[0].requires_grad, "without targets, logits are the output"


def test_plain_gpt_matches_reference(toks):
    """The baseline against a direct, independent transcription of its equations."""
    m = make(toks, n_layer=2)
    x = batch_for(toks, m, TEXT)["idx"]
    F = torch.nn.functional
    rms = lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps)
    T, H, D = x.size(1), 2, 16
    freqs = 10000.0 ** (-torch.arange(0, D, 2).float() / D)
    ang = torch.arange(T).float()[:, None] * freqs
    def rot(t):
        a, b = t[..., : D // 2], t[..., D // 2:]
        return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], -1)
    h = m.wte.weight[x]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for blk in m.blocks:
        u = rms(h)
        q = (u @ blk.attn.q.weight.T).view(1, T, H, D).transpose(1, 2)
        k, v = (u @ blk.attn.kv.weight.T).view(1, T, 2, H, D).permute(2, 0, 3, 1, 4)
        att = (rot(rms(q)) @ rot(rms(k)).transpose(-1, -2)) / D ** 0.5
        y = att.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        h = h + y.transpose(1, 2).reshape(1, T, -1) @ blk.attn.proj.weight.T
        h = h + F.relu(rms(h) @ blk.mlp.fc.weight.T).square() @ blk.mlp.proj.weight.T
    ref = rms(h) @ m.wte.weight.T  # over the padded vocabulary, as the model
    with torch.no_grad():
        assert torch.allclose(m(x)[0], ref, atol=1e-4)


def test_rotary_tables_stay_out_of_checkpoints(toks):
    """The precomputed rotary tables are buffers, not weights: checkpoints hold only the weights, so
    those written before the tables existed still load."""
    m = make(toks, streams=[dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=8, budget=100)])
    assert not any("rope" in k for k in m.state_dict())
    assert m.main_rope.shape == (2, 1, 64, 8) and m.stream_rope0.shape == (2, 1, 100, 8)
    make(toks, streams=[dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=8, budget=100)],
         seed=1).load_state_dict(m.state_dict())


def spread_starts(toks):
    """Window starts over TEXT: the first, an odd one, one in the middle, one whose window is padded."""
    n = len(Corpus.from_bytes(TEXT, toks["bpe300"], []).ids)
    return 0, 37, n // 2, n - 60


def packed(streams, fraction):
    """Streams packed in training, with `fraction` of their budget per window."""
    return [dict(s, packed_budget=int(s["budget"] * fraction)) for s in streams]


@pytest.mark.parametrize("chunked", [False, True], ids=["block_masks", "chunked"])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_flex_and_sdpa_compute_the_same_function(toks, variant, pack, chunked):
    """FlexAttention (block masks built from intervals; forward only on CPU) equals SDPA with dense masks
    written from the same intervals. Three windows, one with padding tokens, lengths not multiples of 128;
    packed: all windows in one row, the last ones cut. chunked: the flex path with side streams' sliding
    windows chunk by chunk (attention.sliding_window) instead of block masks."""
    m = make(toks, streams=packed(VARIANTS[variant], 0.3) if pack else VARIANTS[variant], T=100)
    randomize_cross(m)
    x = batch_for(toks, m, TEXT, starts=spread_starts(toks), pack=pack)
    if pack:
        assert x["sides"][0]["ids"].size(0) == 1 and (x["targets"] == -1).sum() > 10, "the test must cut"
    with torch.no_grad():
        ref, _ = m(**x)
        m.attention, m.chunked_windows = "flex", chunked
        out, _ = m(**x)
    assert torch.allclose(ref, out, atol=2e-5), (ref - out).abs().max()


@pytest.mark.parametrize("window", [1, 8, 64, 65, 100, 256])
def test_sliding_window_chunks_equal_the_interval_mask_with_gradients(window):
    """attention.sliding_window (chunks of 64 elements in one batched SDPA) against the dense interval
    mask that data.collate's self_lo, self_hi give, in float64, output and the gradients of queries,
    keys and values: windows of random lengths packed back to back in rows whose length is no multiple
    of the chunk, padding slots (windows of their own) among them, windows shorter and longer than a
    chunk and than the stream's windows."""
    import attention
    g = torch.Generator().manual_seed(window)
    R, H, N, D = 2, 2, 333, 8
    pos = torch.zeros(R, N, dtype=torch.long)
    for r in range(R):
        j = 0
        while j < N:
            n = int(torch.randint(1, 150, (), generator=g)) if j % 3 else 1  # some 1-slot padding windows
            pos[r, j:j + n] = torch.arange(min(n, N - j))
            j += n
    j = torch.arange(N)
    lo, hi = torch.maximum(j - window + 1, j - pos), (j + 1).expand(R, N)
    q, k, v = (torch.randn(R, H, N, D, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    ref = attention.attend(q, k, v, attention.interval_mask(lo, hi, N))
    out = attention.attend(q, k, v, attention.sliding_window(pos, window))
    assert torch.allclose(ref, out, atol=1e-12)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(ref, (q, k, v), grad), torch.autograd.grad(out, (q, k, v), grad)):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packing_changes_nothing_but_the_cut_tokens(toks, variant, attention):
    """Packed windows compute exactly what unpacked ones do, at every position left in the loss; with
    room for all, at every real position. What another window holds, or where the cut falls, changes
    nothing that is kept."""
    starts = spread_starts(toks) + (11,)
    m = make(toks, streams=VARIANTS[variant], T=100)
    randomize_cross(m)
    m.attention = attention
    with torch.no_grad():
        ref = m(**batch_for(toks, m, TEXT, starts=starts))[0]
        real = batch_for(toks, m, TEXT, starts=starts)["targets"] >= 0
        for fraction, must_cut in ((1.0, False), (0.3, True)):
            m.config.streams = [type(sc)(**dict(vars(sc), packed_budget=int(sc.budget * fraction)))
                                for sc in m.config.streams]
            x = batch_for(toks, m, TEXT, starts=starts, pack=True)
            kept = x["targets"] >= 0
            assert (kept.sum() < real.sum() - 20) == must_cut and (kept <= real).all()
            out = m(**x)[0]
            assert torch.allclose(ref[kept], out[kept], atol=2e-5), (ref[kept] - out[kept]).abs().max()


def test_shared_kv_projects_keys_and_values_once(toks):
    """shared_kv: the reading layers keep their own query and output projections but no key/value
    projection; the stream's one projection is counted as its cross-attention, in parameters and
    FLOPs, and trains with the branch."""
    own, shared = (make(toks, streams=[dict(BYTES, cross_layers="all", shared_kv=flag)]) for flag in (False, True))
    assert all(c.kv is None for b in shared.blocks for c in b.cross) and len(shared.shared_kv) == 1
    kv = 2 * BYTES["n_embd"] ** 2
    assert own.param_counts()["cross:bytes"] - shared.param_counts()["cross:bytes"] == (len(own.blocks) - 1) * kv
    assert own.param_counts()["total"] - shared.param_counts()["total"] == (len(own.blocks) - 1) * kv
    per_token = BYTES["budget"] / own.config.block_size
    assert own.flops_per_token() - shared.flops_per_token() == pytest.approx((len(own.blocks) - 1) * 6 * kv * per_token)
    groups = shared.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", branch_lr_scale=2.0).param_groups
    branch = {id(p) for g in groups if g["lr_scale"] == 2.0 for p in g["params"]}
    assert id(shared.shared_kv["0"].weight) in branch


def test_parallel_cross_attention_has_the_same_parameters_and_another_function(toks):
    """parallel: the same parameters as cross-attention after self-attention (a checkpoint of one
    loads into the other), the plain GPT at initialisation, and, once trained, a different function
    (the cross-attention reads the layer's input, not self-attention's output)."""
    seq, par = (make(toks, streams=[dict(BYTES, cross_layers="all", parallel=flag)]) for flag in (False, True))
    assert {k: v.shape for k, v in seq.state_dict().items()} == {k: v.shape for k, v in par.state_dict().items()}
    base = make(toks)
    par.load_state_dict(base.state_dict(), strict=False)  # the main weights; cross-attention adds 0
    x = batch_for(toks, seq, TEXT)
    with torch.no_grad():
        plain = base(**{k: v for k, v in x.items() if k != "sides"})[0]
        assert torch.allclose(par(**x)[0], plain, atol=1e-5)
        randomize_cross(seq)
        par.load_state_dict(seq.state_dict())
        assert not torch.allclose(par(**x)[0], seq(**x)[0], atol=1e-3)


def test_parallel_fused_queries_sum_the_separate_modules(toks, monkeypatch):
    """parallel=True runs the query projections of self- and cross-attention as one matmul: the same
    values and gradients as calling each module on its own and summing, with two streams read beside
    self-attention (each query matched to its heads)."""
    streams = [dict(BYTES, cross_layers="all", parallel=True),
               dict(BYTES, tokenizer="bpe400", budget=128, cross_layers=[1], locality=1, parallel=True)]
    model = make(toks, streams=streams).double()
    randomize_cross(model)
    x = batch_for(toks, model, TEXT, starts=(0, 40))

    def separate(self, h, rope_, mask, read):
        y = self.attn(h, None, rope_, rope_, mask)
        for s, xattn in zip(self.reads, self.cross):
            states, q_rope, k_rope, cross_mask, kv = read[s]
            q = h.reshape(states.size(0), -1, h.size(-1))
            y = y + xattn(q, states, q_rope, k_rope, cross_mask, kv).view_as(y)
        return y

    def loss_and_grads():
        model.zero_grad()
        loss = model(**x)[1]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused, fused_grads = loss_and_grads()
    monkeypatch.setattr(Block, "attention_beside_cross", separate)
    ref, ref_grads = loss_and_grads()
    assert torch.allclose(fused, ref, rtol=1e-12), (fused, ref)
    assert fused_grads.keys() == ref_grads.keys() and any(".cross.1." in n for n in ref_grads)
    for n, g in ref_grads.items():
        assert torch.allclose(fused_grads[n], g, rtol=1e-9, atol=1e-12), n


def test_param_counts_and_flops(toks):
    m = make(toks, streams=VARIANTS["two_streams"])
    counts = m.param_counts()
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"] == sum(p.numel() for p in m.parameters())
    assert counts["cross:bytes"] > 0 and counts["stream:bpe400"] > 0
    assert m.flops_per_token() > make(toks).flops_per_token()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("variant", ["local0", "local2", "overflow", "two_streams", "shared_kv", "parallel",
                                     "one_head", "conv"])
@pytest.mark.parametrize("chunked", [False, True], ids=["block_masks", "chunked"])
def test_gpu_compiled_flex_matches_sdpa(toks, variant, pack, chunked):
    """On GPU: torch.compile + FlexAttention, forward and gradients, against the SDPA reference path;
    chunked: side streams' sliding windows chunk by chunk (attention.sliding_window)."""
    m = make(toks, streams=packed(VARIANTS[variant], 0.6) if pack else VARIANTS[variant], T=256).cuda().train()
    randomize_cross(m)
    m.chunked_windows = chunked
    text = TEXT * 4
    x = batch_inputs(batch_for(toks, m, text, starts=(0, 300), pack=pack), "cuda")
    assert_compiled_flex_matches_sdpa(m, x, torch.compile)


def assert_compiled_flex_matches_sdpa(m, x, compile_model):
    """Loss and every gradient of model m on batch x: eager SDPA, then compile_model(m) with flex
    (locality 0 through kernels.py)."""
    grads = {}
    for path in ("sdpa", "flex"):
        m.attention, m.own_kernel = path, path == "flex"
        m.zero_grad()
        _, loss = (compile_model(m) if path == "flex" else m)(**x)
        loss.backward()
        grads[path] = (loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None])
    (l0, g0), (l1, g1) = grads["sdpa"], grads["flex"]
    assert torch.allclose(l0, l1, atol=1e-4)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), (a - b).abs().max()


# the byte stream of the study's training runs (config/study/base/tasks_small.py): 2 x 128, 4 heads
# of 32, window 256, up to 3072 bytes per window, 2176 per window when packed
WIDE_BYTES = dict(tokenizer="bytes", n_layer=2, n_head=4, n_embd=128, window=256, budget=3072,
                  packed_budget=2176, cross_layers=[0])


def varied_text(n_docs, seed=0):
    """TEXT's documents in a seeded random order, n_docs of them: windows that all differ."""
    rng = random.Random(seed)
    return b"\xff".join(rng.choice(HARD_DOCS + [PLAIN]).encode() for _ in range(n_docs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("stream,chunked", [
    pytest.param({}, False, id="layer0"),
    pytest.param(dict(cross_layers="all", locality=0, shared_kv=True, parallel=True), False,
                 id="all_layers_local0_shared_kv_parallel"),
    pytest.param(dict(n_head=1, cross_layers="all", locality=0, shared_kv=True, parallel=True), False,
                 id="one_head_all_layers"),
    pytest.param(dict(mixer="recurrent"), False, id="recurrent"),
    pytest.param(dict(mixer="conv", n_layer=1, cross_layers="all", locality=0, shared_kv=True, parallel=True),
                 False, id="conv_all_layers"),
    # the default's byte GPT and reading (config/bytes.py), its windows chunk by chunk (sliding_window)
    pytest.param(dict(n_layer=1, n_head=2, cross_layers="every2", locality=0, shared_kv=True, parallel=True),
                 True, id="default_chunked")])
def test_gpu_compiled_flex_matches_sdpa_at_training_sizes(toks, pack, stream, chunked):
    """On GPU, as train.py runs it: the model compiled once (train.compile_model), evaluated first
    under no_grad on a batch of other shapes (3 unpacked windows, reduction='none'), then trained on
    8 windows of 512 tokens, packed or not, with the study's byte stream (read by layer 0, or by
    every layer beside its self-attention, each token its own bytes, through one shared key/value
    projection; or a recurrent byte GPT, whose scan and its own backward pass are compiled here).
    Forward and every gradient against eager SDPA, in float32. (Block lists built by
    range arithmetic passed the small test above but gave wrong gradients here:
    results/flex_gradient_bug/.)"""
    import train
    torch._dynamo.reset()  # a fresh process, as train.py's
    # bpe400: about 3 bytes per token, so that a window fills about half its byte budget
    m = make(toks, main="bpe400", streams=[dict(WIDE_BYTES, **stream)], T=512).cuda()
    randomize_cross(m)
    text = varied_text(80)
    train_x = batch_for(toks, m, text, starts=range(0, 8 * 512, 512), pack=pack)
    eval_x = batch_for(toks, m, text, starts=(100, 1300, 2900))
    assert (train_x["targets"] >= 0).all() and (eval_x["targets"] >= 0).all(), "need full windows"
    rows = (1, 8 * 2176) if pack else (8, 3072)
    assert train_x["sides"][0]["ids"].shape == rows and eval_x["sides"][0]["ids"].shape == (3, 3072)
    train_x, eval_x = batch_inputs(train_x, "cuda"), batch_inputs(eval_x, "cuda")
    results = {}
    m.chunked_windows = chunked
    for path in ("flex", "sdpa"):  # compiled flex first, as in a fresh training process
        m.attention, m.own_kernel = path, path == "flex"
        fn = train.compile_model(m) if path == "flex" else m
        m.eval()
        with torch.no_grad():
            eval_losses = fn(**eval_x, reduction="none")[1]
        m.train()
        m.zero_grad(set_to_none=True)
        loss = fn(**train_x)[1]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results[path] = eval_losses, loss.detach(), grads
    (e0, l0, g0), (e1, l1, g1) = results["sdpa"], results["flex"]
    assert torch.allclose(e0, e1, atol=1e-4, rtol=1e-3), (e0 - e1).abs().max()
    assert torch.allclose(l0, l1, atol=5e-5), (l0, l1)
    assert g0.keys() == g1.keys() == {n for n, _ in m.named_parameters()}
    assert g0["streams.0.wte.weight"].abs().max() > 0, "the byte branch must get gradients"
    for n, a in g0.items():  # atol relative to the gradient's scale: some gradients are all small
        err, scale = (g1[n] - a).abs().max(), a.abs().max()
        assert torch.allclose(g1[n], a, atol=1e-4 * scale.item(), rtol=1e-3), (n, err, scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("variant", ["layer0", "local2"])
def test_gpu_compiled_flex_with_fewer_queries_than_a_block(toks, variant):
    """block_size 100: fewer queries than one FlexAttention block (128), where inductor would pick
    its decoding kernel (which failed to compile these masks). Compiled flex, as train.py compiles
    it, against SDPA, forward and gradients."""
    import train
    torch._dynamo.reset()
    m = make(toks, streams=VARIANTS[variant], T=100).cuda()
    randomize_cross(m)
    x = batch_inputs(batch_for(toks, m, TEXT * 4, starts=(0, 37)), "cuda")
    assert_compiled_flex_matches_sdpa(m, x, train.compile_model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_compiled_block_lists_equal_eager_ones(toks, monkeypatch):
    """A compiled forward pass on a GPU builds its block lists by a compiled graph of their own
    (attention.compiled_block_lists): at a training batch's size (32 windows of 4096 bytes packed in
    one row, 32 x 1024 token queries) each of the eight lists equals the eager one exactly, as
    contiguous int32 (the kernels ignore strides). The other GPU tests check what they compute."""
    import attention
    import train
    torch._dynamo.reset()  # a fresh process, as train.py's
    L, T = 32 * 4096, 32 * 1024
    j = torch.arange(L, device="cuda")
    lo, hi = (t.cuda() for t in random_intervals(1, T, L, 1))
    side = dict(ids=torch.zeros(1, L, dtype=torch.long, device="cuda"), cross_lo=lo, cross_hi=hi,
                self_lo=torch.maximum(j - 255, j // 4096 * 4096)[None].int(), self_hi=(j + 1)[None].int())
    (eager,), (compiled,) = (stream_block_lists([side], [(True, True)], c) for c in (False, True))
    for e, c in zip(eager[0] + eager[1], compiled[0] + compiled[1]):
        assert c.dtype == torch.int32 and c.is_contiguous() and torch.equal(e, c)
    calls, eager_lists = [], attention.interval_block_lists
    monkeypatch.setattr(attention, "compiled_block_lists", lambda *a: calls.append(1) or eager_lists(*a))
    m = make(toks, streams=VARIANTS["local2"], T=256).cuda()  # as test_gpu_compiled_flex_matches_sdpa
    m.attention = "flex"
    x = batch_inputs(batch_for(toks, m, TEXT * 4, starts=(0, 300)), "cuda")
    with torch.no_grad():
        train.compile_model(m)(**x)
    assert len(calls) == 2, "the compiled forward pass builds its two masks' lists compiled"


def test_byte_stream_is_the_core_rule(toks):
    """The offset machinery (end, known, intervals) for a byte stream reduces exactly to the core rule:
    token i reads byte j iff j < end of token i. Layer 0 is recomputed here from that rule alone."""
    m = make(toks, streams=[BYTES], n_layer=1)
    randomize_cross(m)
    x = batch_for(toks, m, TEXT)
    ids = x["sides"][0]["ids"]
    T, L = x["idx"].size(1), ids.size(1)
    with torch.no_grad():
        side = m.streams[0](ids, rope(torch.arange(L), 16), _band(L, BYTES["window"]))
        core = torch.arange(L)[None, :] < x["tok_end"][0][:, None]  # byte j is in tokens 0..i
        blk = m.blocks[0]
        h = m.wte(x["idx"])
        h = h + blk.attn(norm(h), None, rope(torch.arange(T), 16), rope(torch.arange(T), 16), "causal")
        q_rope = rope(x["tok_end"][0].long(), 16)
        k_rope = rope(torch.arange(1, L + 1), 16)  # byte j ends at offset j + 1
        h = h + blk.cross[0](norm(h), side, q_rope, k_rope, core[None, None])
        h = h + blk.mlp(norm(h))
        assert torch.allclose(m.lm_head(norm(h)), m(**x)[0], atol=1e-5)


def _band(L, window):
    i = torch.arange(L)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


def random_intervals(R, Q, L, seed):
    """Nondecreasing random bounds with wide and empty intervals, so that blocks are full, partial, or
    skipped."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, L // (1 + 3 * (seed % 2)), (R, Q), generator=g).sort(1).values  # fast or slow
    hi = (lo + torch.randint(-50, 600, (R, Q), generator=g)).clamp(0, L)
    hi = torch.maximum(torch.cummax(hi, 1).values, lo)
    return lo.int(), hi.int()


@pytest.mark.parametrize("seed", range(3))
def test_own_elements_attention_is_the_interval_rule(seed):
    """Locality 0 on the flex path: attention by gathers and scatter-adds over each query's own
    elements equals dense SDPA under the same disjoint intervals, in values and gradients; queries
    with no element (padding, a cut) give zeros and elements that no query reads get no gradient."""
    g = torch.Generator().manual_seed(seed)
    R, Q, L, H, D = 2, 60, 200, 2, 8
    lengths = torch.randint(0, 6, (R, Q), generator=g) * (torch.rand(R, Q, generator=g) > 0.2)
    gaps = torch.randint(0, 3, (R, Q), generator=g)  # elements no query reads, between queries
    hi = (lengths + gaps).cumsum(1).clamp(max=L - 5)
    lo = (hi - lengths).clamp(min=0)
    lo[:, 0] = hi[:, 0] = 0
    assert (hi > lo).sum() > Q and (hi == lo).sum() > 5 and hi[:, -1].max() < L, "need a mix"
    own = own_elements(lo, hi, L)
    assert own.owned.sum() == (hi - lo).sum()
    qkv = [torch.randn(R, H, n, D, generator=g, dtype=torch.float64, requires_grad=True) for n in (Q, L, L)]
    out = attend(*qkv, own)
    ref = attend(*qkv, interval_mask(lo, hi, L))
    assert torch.allclose(out, ref, atol=1e-10) and (out[(hi == lo)[:, None].expand(R, H, Q)] == 0).all()
    w = torch.randn(R, H, Q, D, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((o * w).sum(), qkv) for o in (out, ref)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10), (a - b).abs().max()
    assert (grads[0][2].abs().sum((1, 3)) > 0).eq(own.owned).all(), "values read by no query get no gradient"


@pytest.mark.parametrize("pack", [False, True])
def test_own_elements_path_trains_like_sdpa(toks, pack):
    """A recurrent byte stream read with locality 0 uses no FlexAttention at all on the flex path, so
    its gradients can be checked on the CPU: loss and every gradient equal the SDPA path's."""
    streams = [dict(BYTES, mixer="recurrent", locality=0, cross_layers="all")]
    m = make(toks, streams=packed(streams, 0.6) if pack else streams, T=100).train()
    randomize_cross(m)
    x = batch_for(toks, m, TEXT, starts=spread_starts(toks), pack=pack)
    grads = {}
    for path in ("sdpa", "flex"):
        m.attention = path
        assert m.reads_own_elements(0) == (path == "flex")
        m.zero_grad()
        loss = m(**x)[1]
        loss.backward()
        grads[path] = loss.detach(), [p.grad.clone() for p in m.parameters()]
    (l0, g0), (l1, g1) = grads["sdpa"], grads["flex"]
    assert torch.allclose(l0, l1, atol=1e-6)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


@pytest.mark.parametrize("seed", range(4))
def test_interval_block_mask_is_the_interval_rule(seed):
    """The block lists: flex attention under them equals dense SDPA under the intervals, and
    the transposed lists (used by the backward pass) hold exactly the query blocks that see each key block."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    R, Q, L, H, D = 2, 700, 900, 2, 16
    lo, hi = random_intervals(R, Q, L, seed)
    mask = interval_block_mask(lo, hi, L, interval_block_lists(lo, hi, L))
    assert mask.full_kv_num_blocks.sum() > 0 and mask.kv_num_blocks.sum() > 0, "need full and partial blocks"
    # GPU kernels read the lists as contiguous (a transposed view gave wrong gradients on an H200)
    lists = [mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
             mask.q_num_blocks, mask.q_indices, mask.full_q_num_blocks, mask.full_q_indices]
    assert all(t.is_contiguous() and t.dtype == torch.int32 for t in lists)
    strided = lists[5].transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
    with pytest.raises(AssertionError):
        interval_block_mask(lo, hi, L, (*lists[:5], strided, *lists[6:]))
    q, k, v = torch.randn(R, H, Q, D), torch.randn(R, H, L, D), torch.randn(R, H, L, D)
    dense = (torch.arange(L) >= lo[..., None]) & (torch.arange(L) < hi[..., None])
    sees = dense.any(-1)[:, None, :, None]
    attn_mask = (dense | ~dense.any(-1, keepdim=True))[:, None]  # rows that see nothing: zeros, as flex
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask) * sees
    assert torch.allclose(flex_attention(q, k, v, block_mask=mask), ref, atol=1e-5)
    # the block lists themselves (CPU flex evaluates mask_mod everywhere, so the output alone cannot tell):
    # visible pairs lie in listed blocks, full blocks are wholly visible, partial ones partly
    nq, nk = -(-Q // 128), -(-L // 128)

    def blocks(rows_past_q):  # (R, q block, kv block, 128, 128) view of the dense mask
        m = torch.cat([dense, torch.full((R, nq * 128 - Q, L), rows_past_q)], 1)
        return torch.nn.functional.pad(m, (0, nk * 128 - L)).view(R, nq, 128, nk, 128).transpose(2, 3)

    some, every = blocks(False), blocks(True)  # query rows past Q are dropped: they may count either way
    for r in range(R):
        for qb in range(nq):
            partial = set(mask.kv_indices[r, 0, qb, :mask.kv_num_blocks[r, 0, qb]].tolist())
            full = set(mask.full_kv_indices[r, 0, qb, :mask.full_kv_num_blocks[r, 0, qb]].tolist())
            assert not partial & full
            assert {kb for kb in range(nk) if some[r, qb, kb].any()} <= partial | full
            assert all(every[r, qb, kb].all() for kb in full) and all(some[r, qb, kb].any() for kb in partial)
            # each row is a permutation of the key blocks (the kernels may read past the count), listed
            # ones first and in increasing order
            for count, indices in ((mask.kv_num_blocks, mask.kv_indices), (mask.full_kv_num_blocks,
                                                                           mask.full_kv_indices)):
                row = indices[r, 0, qb].tolist()
                assert sorted(row) == list(range(nk)) and row[:count[r, 0, qb]] == sorted(row[:count[r, 0, qb]])
    reference = BlockMask.from_kv_blocks(mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks,
                                         mask.full_kv_indices, BLOCK_SIZE=128, seq_lengths=(Q, L))
    pairs = [((mask.q_num_blocks, mask.q_indices), (reference.q_num_blocks, reference.q_indices)),
             ((mask.full_q_num_blocks, mask.full_q_indices), (reference.full_q_num_blocks, reference.full_q_indices))]
    for ours, theirs in pairs:
        assert torch.equal(ours[0], theirs[0])
        for r in range(R):
            for kb in range(ours[0].size(-1)):
                n = int(ours[0][r, 0, kb])
                assert sorted(ours[1][r, 0, kb, :n].tolist()) == sorted(theirs[1][r, 0, kb, :n].tolist())


def test_block_lists_take_few_operations():
    """Uncompiled, the block lists run eagerly on the host's critical path every step (each tensor
    operation costs a launch on a GPU): one packed byte stream's two masks stay within 130
    operations (a construction with four sorts by cumulative sums took 240)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    L, T = 4 * 512, 4 * 128
    j = torch.arange(L)
    lo, hi = random_intervals(1, T, L, 0)
    side = dict(ids=torch.zeros(1, L, dtype=torch.long), self_lo=torch.maximum(j - 255, j // 512 * 512)[None].int(),
                self_hi=(j + 1)[None].int(), cross_lo=lo, cross_hi=hi)
    with Count():
        stream_block_lists([side], [(True, True)])
    assert 0 < Count.n <= 130, Count.n


@pytest.mark.parametrize("variant", ["layer0", "local0", "local2", "two_streams"])
def test_forward_compiles_to_one_graph_beside_eager_block_lists(toks, variant, monkeypatch):
    """Masks from loader intervals: the forward pass traces as one graph, flex masks included,
    while every mask's block lists are built eagerly, outside it (attention.stream_block_lists, at
    the start of the forward pass), packed or not; locality 0's cross-attention needs none. SDPA
    (dense masks) traces whole too."""
    import attention as masks_module
    compiling = []
    lists = masks_module.interval_block_lists
    monkeypatch.setattr(masks_module, "interval_block_lists",
                        lambda *a: compiling.append(torch.compiler.is_compiling()) or lists(*a))
    m = make(toks, streams=packed(VARIANTS[variant], 0.5), T=100)
    masks = sum((s.mixer != "recurrent") + (s.locality != 0) for s in m.config.streams)
    for attention, pack in (("flex", False), ("flex", True), ("sdpa", False)):
        m.attention = attention
        x = batch_for(toks, m, TEXT, starts=(0, 37), pack=pack)
        compiling.clear()
        with torch.no_grad():
            explained = torch._dynamo.explain(m)(**x)
        assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
        assert compiling == ([False] * masks if attention == "flex" else []), compiling
