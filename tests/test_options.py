"""Options that make tokens need their bytes: resegmentation of the main stream and embedding dropout;
and what the training loop takes from the batch (validation windows, epoch offsets)."""
import numpy as np
import pytest
import torch

from conftest import args, run_inprocess, val_losses
from data import Corpus, collate, resegmented_window
from model import GPT, GPTConfig, batch_inputs
from test_model import BYTES, TEXT, randomize_cross
import train


def test_resegmented_window_is_a_window_of_the_same_bytes(toks):
    main, side = toks["bpe300"], [toks["bytes"]]
    c = Corpus.from_bytes(TEXT, main, side)
    T, p = 40, 9
    w = resegmented_window(c, p, T, main, side, [(side[0], 512)], 0.5, "1:9")
    assert (w["idx"] == resegmented_window(c, p, T, main, side, [(side[0], 512)], 0.5, "1:9")["idx"]).all()
    plain = c.window(p, T, [(side[0], 512)])
    b0 = int(c.starts[p])
    n = int((w["tok_end"] < 2**31 - 1).sum())
    assert n == T and not (w["idx"] == plain["idx"]).all()
    spelled = main.decode(np.r_[w["idx"][:n], w["targets"][n - 1]])  # inputs, then the last target
    assert spelled == TEXT[b0:b0 + len(spelled)], "other ids, the same text"
    ids, end, _ = w["sides"][0]
    k = int((end < 2**31 - 1).sum())
    assert bytes(ids[:k].astype(np.uint8)) == TEXT[b0:b0 + k], "the byte stream is the same text"


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


def test_training_with_both_options(dataset, toks, tmp_path):
    opts = dict(resegment=0.2, embed_dropout=0.3, embed_dropout_anneal=0.5, max_iters=12, eval_interval=6)
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
