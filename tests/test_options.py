"""Options that make tokens need their bytes: resegmentation of the main stream and embedding dropout;
and what the training loop takes from the batch (validation windows, epoch offsets)."""
import numpy as np
import pytest
import torch

from conftest import PLAIN, args, run_inprocess, val_losses
from data import Corpus, batch_inputs, collate, resegmented_window
from model import GPT, GPTConfig, next_element_targets
from test_model import BYTES, TEXT, randomize_cross
import train


def test_resegmented_window_is_a_window_of_the_same_bytes(toks):
    main, side = toks["bpe300"], [toks["bytes"]]
    c = Corpus.from_bytes(TEXT, main, side)
    T, p = 40, 9
    w = resegmented_window(c, p, T, main, side, [(side[0], 512)], 0.5, 1)
    assert (w["idx"] == resegmented_window(c, p, T, main, side, [(side[0], 512)], 0.5, 1)["idx"]).all()
    plain = c.window(p, T, [(side[0], 512)])
    b0 = int(c.starts[p])
    n = int((w["tok_end"] < 2**31 - 1).sum())
    assert n == T and not (w["idx"] == plain["idx"]).all()
    spelled = main.decode(np.r_[w["idx"][:n], w["targets"][n - 1]])  # inputs, then the last target
    assert spelled == TEXT[b0:b0 + len(spelled)], "other ids, the same text"
    ids, end, _ = w["sides"][0]
    k = int((end < 2**31 - 1).sum())
    assert bytes(ids[:k].astype(np.uint8)) == TEXT[b0:b0 + k], "the byte stream is the same text"


@pytest.mark.parametrize("side", ["bytes", "bpe300"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
def test_resegmented_windows_sharing_a_prefix_cut_it_alike(toks, side, rate):
    """Training's cuts are causal: whether and where a token is cut depends on the run seed and its
    position in the corpus alone. Windows whose first tokens are the same text get the same ids, and
    side elements, for them whatever follows; a token is cut alike in every window that holds it.
    (bpe400 as main tokenizer: some of its tokens have several valid cuts.)"""
    main, sides = toks["bpe400"], [toks[side]]
    kept, T, p = [(sides[0], 512)], 80, 5
    head = main.encode(PLAIN)[:60]
    windows = []
    for cont in ("berry jam and more shells by the sea, all of them strange", " hat and more shells"):
        ids = head + main.encode(cont + " and the end of the story was near, as everyone knew. " * 3)
        c = Corpus.from_bytes(main.decode(ids), main, sides, main_ids=ids)
        windows.append(resegmented_window(c, p, T, main, sides, kept, rate, seed=1))
    head_end = int(c.starts[len(head)] - c.starts[p])  # the shared text's end, in window offsets
    a, b = ((w["idx"][w["tok_end"] <= head_end].tolist(), w["tok_end"][w["tok_end"] <= head_end].tolist())
            for w in windows)
    assert len(a[0]) > len(head) - p, "the test must cut some of the shared tokens"
    assert a == b, "later text changed the cuts of earlier tokens"
    for (ia, ea, ka), (ib, eb, kb) in zip(windows[0]["sides"], windows[1]["sides"]):
        seen_a, seen_b = ka <= head_end, kb <= head_end
        assert ia[seen_a].tolist() == ib[seen_b].tolist() and ea[seen_a].tolist() == eb[seen_b].tolist()
    later = resegmented_window(c, p + 20, T, main, sides, kept, rate, seed=1)
    s = int(np.flatnonzero(windows[1]["tok_start"] == c.starts[p + 20] - c.starts[p])[0])
    assert (later["idx"][:T - s] == windows[1]["idx"][s:]).all(), "the same token, cut alike in another window"


def test_embedding_dropout_leaves_only_the_bytes(toks):
    """p = 1 in training: outputs no longer depend on token ids, only on bytes; evaluation drops nothing."""
    torch.manual_seed(0)
    cfg = GPTConfig(tokenizer="bpe300", vocab_size=toks["bpe300"].vocab_size, block_size=32, n_layer=2,
                    n_head=2, n_embd=32, streams=[dict(BYTES, vocab_size=256)])
    m = GPT(cfg)
    randomize_cross(m)
    c = Corpus.from_bytes(TEXT, toks["bpe300"], [toks["bytes"]])
    x = batch_inputs(collate([c.window(3, 32, [(toks["bytes"], 256)])], cfg.streams), "cpu")
    other = dict(x, idx=(x["idx"] + 1) % 300)
    m.drop_embeddings = True
    m.embed_dropout.fill_(1.0)
    with torch.no_grad():
        assert torch.allclose(m(**x)[0], m(**other)[0]), "with every embedding dropped, ids must not matter"
        m.eval()
        assert not torch.allclose(m(**x)[0], m(**other)[0]), "evaluation never drops embeddings"
        m.train()
        m.embed_dropout.fill_(0.0)
        assert not torch.allclose(m(**x)[0], m(**other)[0])


def test_embedding_dropout_schedule():
    cfg = dict(embed_dropout=0.3, embed_dropout_anneal=0.5, max_iters=100)
    assert [train.embed_dropout_at(i, cfg) for i in (0, 25, 50, 99)] == pytest.approx([0.3, 0.15, 0.0, 0.0])
    assert train.embed_dropout_at(99, dict(cfg, embed_dropout_anneal=0.0)) == 0.3


def test_training_with_all_options(dataset, toks, tmp_path):
    side = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=16, budget=96, packed_budget=64,
                aux_loss=0.3)
    opts = dict(resegment=0.2, embed_dropout=0.3, embed_dropout_anneal=0.5, branch_lr_scale=2.0, streams=[side],
                max_iters=12, eval_interval=6)
    run_inprocess(args(dataset, toks, tmp_path / "full", **opts))
    losses = val_losses(tmp_path / "full")
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_validation_windows_do_not_depend_on_batch_size_or_processes(toks):
    c = Corpus.from_bytes(TEXT * 3, toks["bpe300"], [])
    T = 16
    def windows(B, world):
        out = []
        for rank in range(world):
            out += [p for batch in train.validation_windows(c, T, 160, rank, world, B) for p, n in batch if n != 0]
        return sorted(out)
    assert windows(4, 1) == windows(3, 1) == windows(2, 3) == windows(7, 2)
    assert len(windows(4, 1)) == 10
    for batch in train.validation_windows(c, T, 160, 1, 3, 4):
        assert len(batch) == 4, "the last batch is filled up, so shapes stay fixed"


def test_epochs_shift_their_windows(toks):
    c = Corpus.from_bytes(TEXT * 3, toks["bpe300"], [])
    b = train.Batches(c, 16, toks["bpe300"], [], [], seed=0)
    first, second = b.positions(0, b.n), b.positions(b.n, b.n)
    assert sorted(first) == [16 * i for i in range(b.n)], "epoch 0: the plain non-overlapping windows"
    assert len({p % 16 for p in second}) == 1 and second[0] % 16 != 0, "a later epoch: all shifted alike"
    assert b.positions(b.n, b.n) == second, "positions follow from the global position alone"


def test_stream_aux_loss_targets_stay_inside_each_window(toks):
    """aux_loss: element m of a packed row is trained to predict element m + 1 of the same window; a
    window's last element and padding predict nothing; evaluation reports the main loss alone."""
    torch.manual_seed(0)
    side = dict(BYTES, packed_budget=80, aux_loss=0.5)
    cfg = GPTConfig(tokenizer="bpe300", vocab_size=toks["bpe300"].vocab_size, block_size=16, n_layer=2,
                    n_head=2, n_embd=32, streams=[dict(side, vocab_size=256)])
    m = GPT(cfg)
    c = Corpus.from_bytes(TEXT, toks["bpe300"], [toks["bytes"]])
    windows = [c.window(p, 16, [(toks["bytes"], side["budget"])]) for p in (3, 40)]
    x = batch_inputs(collate(windows, cfg.streams, pack=True), "cpu")
    ids, pos = x["sides"][0]["ids"][0], x["sides"][0]["pos"][0]
    ends = [int((w["sides"][0][1] < 2**31 - 1).sum()) for w in windows]  # bytes kept per window
    t = next_element_targets(x["sides"][0])[0]
    first, second = min(ends[0], 80), ends[1]
    assert (t[:first - 1] == ids[1:first]).all(), "inside window 1: the next byte"
    assert t[first - 1] == -1 and pos[first] == 0, "window 1's last byte does not predict window 2's first"
    assert (t[first:first + second - 1] == ids[first + 1:first + second]).all()
    assert (t[first + second - 1:] == -1).all(), "the last byte and the padding predict nothing"
    with torch.no_grad():
        main_only = GPT(GPTConfig(**dict(vars(cfg), streams=[dict(side, aux_loss=0.0, vocab_size=256)])))
        main_only.load_state_dict(m.state_dict())
        m.eval(), main_only.eval()
        assert m(**x)[1] == main_only(**x)[1], "evaluation: the main loss alone"
        m.train(), main_only.train()
        assert m(**x)[1] > main_only(**x)[1], "training adds the stream's own loss"


def test_branch_learning_rate_scale(dataset, toks, tmp_path):
    """branch_lr_scale: the side streams and cross-attention get their own optimizer groups, scaled; a
    resume keeps this run's scale, and a resume across 1 and another value is refused clearly."""
    m = GPT(GPTConfig(tokenizer="bpe300", vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32,
                      streams=[dict(BYTES, vocab_size=256)]))
    plain = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu")
    split = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", branch_lr_scale=3.0)
    assert len(plain.param_groups) == 2 and sorted(g["lr_scale"] for g in split.param_groups) == [1, 1, 3, 3]
    names = {id(p): n for n, p in m.named_parameters()}
    for g in split.param_groups:
        branch = [n.startswith("streams.") or ".cross." in n for n in (names[id(p)] for p in g["params"])]
        assert all(branch) if g["lr_scale"] == 3.0 else not any(branch)
    opts = dict(branch_lr_scale=2.0, max_iters=4, eval_interval=4)
    run_inprocess(args(dataset, toks, tmp_path / "run", **opts))
    assert np.isfinite(val_losses(tmp_path / "run")).all()
    run_inprocess(args(dataset, toks, tmp_path / "run", **dict(opts, branch_lr_scale=4.0, max_iters=6),
                       init_from="resume"))
    saved = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["optimizer"]["param_groups"]
    assert sorted(g["lr_scale"] for g in saved) == [1, 1, 4, 4], "the resumed run's scale, not the checkpoint's"
    with pytest.raises(SystemExit, match="branch_lr_scale changed between 1"):
        run_inprocess(args(dataset, toks, tmp_path / "run", **dict(opts, branch_lr_scale=1.0, max_iters=8),
                           init_from="resume"))
