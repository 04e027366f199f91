"""Causality, for every variation: no token position may see bytes, or side tokens, of a later token.

The texts are re-tokenized end to end after each change (side streams included), so a side token whose
boundaries depend on later bytes (" straw" vs " strawberry") is exercised, not just its tensor slot."""
import pytest
import torch

import train
from data import Corpus, batch_inputs, collate
from model import GPT, GPTConfig
from test_model import BYTES, VARIANTS, randomize_cross

T = 48
PREFIX = "\xffShe sold a straw hat, the tart had a strawberry on it; and the sea shells were strange to see, for"


def build(toks, streams, n_layer=2, attention="sdpa", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(tokenizer="bpe300", vocab_size=toks["bpe300"].vocab_size, block_size=T, n_layer=n_layer,
                    n_head=2, n_embd=32, streams=[dict(s, vocab_size=toks[s["tokenizer"]].vocab_size) for s in streams])
    m = GPT(cfg).eval()
    # flex_chunked: flex with side streams' sliding windows chunk by chunk (attention.sliding_window)
    m.attention, m.chunked_windows = attention.removesuffix("_chunked"), attention.endswith("_chunked")
    randomize_cross(m)
    return m


def inputs(toks, model, ids, side_ids=None):
    """Model inputs for main ids `ids` (bytes follow from them); side streams are re-tokenized from the
    bytes. `side_ids` optionally overrides stream 0's element ids (to change bytes but not tokens)."""
    main = toks["bpe300"]
    data = main.decode(ids)
    side_toks = [toks[s.tokenizer] for s in model.config.streams]
    corpus = Corpus.from_bytes(data, main, side_toks, main_ids=ids)
    w = corpus.window(0, T, [(t, s.budget) for t, s in zip(side_toks, model.config.streams)], n=min(T, len(ids) - 1))
    if side_ids is not None:
        w["sides"][0] = (side_ids,) + tuple(w["sides"][0][1:])
    return batch_inputs(collate([w], model.config.streams), "cpu"), w


def logits(model, x):
    with torch.no_grad():
        return model(**{k: v for k, v in x.items() if k != "targets"})[0][0]


def canonical(toks, text):
    return toks["bpe300"].encode_any_bytes(text.encode())


# a budget far below the window's bytes: what is kept must not depend on how long later tokens are;
# every layer reading only its own token's bytes (config/bytes_own.py), with one key/value projection for
# all (config/speed/bytes_all_layers_local0_shared_kv.py); some layers above 0 doing so (config/bytes_every3.py);
# the default's reading (config/bytes.py: shared keys/values, beside self-attention) by a layer above 0
UPPER_LAYER_DEFAULT = dict(BYTES, cross_layers=[1], locality=0, shared_kv=True, parallel=True)
CAUSAL_VARIANTS = dict(VARIANTS, tight_budget=[dict(BYTES, budget=64)],
                       all_layers_local0=[dict(BYTES, cross_layers="all", locality=0)],
                       upper_layer_local0=[dict(BYTES, cross_layers=[1], locality=0)],
                       upper_layer_default=[UPPER_LAYER_DEFAULT],
                       all_layers_local0_shared_kv=[dict(BYTES, cross_layers="all", locality=0, shared_kv=True)],
                       # the same reading of a one-head byte GPT mixed by a convolution wider than most
                       # tokens (config/speed/bytes_conv64.py)
                       conv_upper_layer=[dict(UPPER_LAYER_DEFAULT, mixer="conv", conv_width=8, n_head=1)],
                       # a window over more bytes than a chunk of attention.sliding_window holds (64)
                       long_window=[dict(UPPER_LAYER_DEFAULT, window=100)])
# side streams mixed by a recurrence instead of attention (mixer="recurrent")
RECURRENT = dict(BYTES, mixer="recurrent")
CAUSAL_VARIANTS.update(recurrent=[RECURRENT], recurrent_two_layers=[dict(RECURRENT, n_layer=2)],
                       recurrent_local0=[dict(RECURRENT, locality=0)],
                       recurrent_two_streams=[RECURRENT, dict(BYTES, tokenizer="bpe400", budget=128, cross_layers=[1],
                                                              locality=1)])
CONTINUATIONS = ["berry jam and more shells by the sea, all of them strange", " hat and more shells by the sea"]


@pytest.mark.parametrize("attention", ["sdpa", "flex", "flex_chunked"])
@pytest.mark.parametrize("variant", list(CAUSAL_VARIANTS))
def test_later_tokens_do_not_change_earlier_outputs(toks, variant, attention):
    m = build(toks, CAUSAL_VARIANTS[variant], attention=attention)
    head = canonical(toks, PREFIX[:40] + " a straw")
    i = len(head) - 1  # the last token of " straw": a side word that later bytes may extend
    assert i < T - 8
    outs = []
    for cont in CONTINUATIONS:
        ids = head + toks["bpe300"].encode(cont) + canonical(toks, " " + PREFIX[1:] * 2)
        x, _ = inputs(toks, m, ids[: T + 1])
        outs.append(logits(m, x))
    assert torch.equal(outs[0][: i + 1], outs[1][: i + 1]), "a later token changed an earlier output"
    assert not torch.allclose(outs[0][i + 1:], outs[1][i + 1:]), "the change must be visible later on"


@pytest.mark.parametrize("rate", [0.1, 0.2])
@pytest.mark.parametrize("variant", ["layer0", "two_streams"])
def test_training_with_resegment_keeps_later_text_out_of_earlier_outputs(toks, variant, rate):
    """The training path with resegment > 0 (train.Batches, packed as on a GPU): the cuts of earlier
    tokens, and so the outputs at them, do not depend on what follows."""
    streams = [dict(s, packed_budget=s["budget"]) for s in CAUSAL_VARIANTS[variant]]
    m = build(toks, streams)
    main, side_toks = toks["bpe300"], [toks[s["tokenizer"]] for s in streams]
    head = canonical(toks, PREFIX[:40] + " a straw")
    head_end = len(main.decode(head))
    outs, ends = [], []
    for cont in CONTINUATIONS:
        ids = head + main.encode(cont) + canonical(toks, " " + PREFIX[1:] * 2)
        corpus = Corpus.from_bytes(main.decode(ids), main, side_toks, main_ids=ids)
        batches = train.Batches(corpus, T, main, side_toks, m.config.streams, seed=3, pack=True, resegment=rate)
        batch = batches.get([0])
        outs.append(logits(m, batch_inputs(batch, "cpu")))
        ends.append(batch["tok_end"][0])
    i = int((ends[0] <= head_end).sum())  # the tokens that spell the shared text, after cutting
    assert i > len(head) and i == int((ends[1] <= head_end).sum()), "the shared text must be cut alike"
    assert torch.equal(outs[0][:i], outs[1][:i]), "later text changed an earlier output"
    assert not torch.allclose(outs[0][i:], outs[1][i:]), "the change must be visible later on"


def test_side_tokens_ending_inside_the_past_can_depend_on_the_future(toks):
    """Why side streams need `known`: a side token may end inside tokens 0..i and still exist only
    because of what follows. With visibility by `end` alone, this leaks; with `known` it does not."""
    side = toks["bpe400"]
    main = toks["bpe300"]
    head = canonical(toks, PREFIX[:40] + " a straw")
    e_i = len(main.decode(head))
    seen = []
    for cont in CONTINUATIONS:
        data = main.decode(head + main.encode(cont))
        c = Corpus.from_bytes(data, main, [side], main_ids=head + main.encode(cont))
        ids, starts, known = c.sides["bpe400.side"]
        ends = starts[1:]
        by_end = [(int(t), int(e)) for t, e in zip(ids, ends) if e <= e_i]
        by_known = [(int(t), int(e)) for t, e, k in zip(ids, ends, known) if k <= e_i]
        seen.append((by_end, by_known))
    assert seen[0][0] != seen[1][0], "test text must make the naive rule see different side tokens"
    assert seen[0][1] == seen[1][1], "the rule by `known` sees the same side tokens whatever follows"


@pytest.mark.parametrize("attention", ["sdpa", "flex", "flex_chunked"])
@pytest.mark.parametrize("variant", ["layer0", "all_layers", "local0", "local2", "two_streams", "recurrent",
                                     "recurrent_two_layers", "recurrent_local0", "upper_layer_local0",
                                     "shared_kv", "parallel", "upper_layer_default", "conv", "conv_upper_layer",
                                     "long_window"])
def test_own_bytes_change_own_output(toks, variant, attention):
    """Changing the bytes of token i (not its id) changes output i and nothing before it."""
    m = build(toks, CAUSAL_VARIANTS[variant], attention=attention)
    ids = canonical(toks, PREFIX + PREFIX[1:])[: T + 1]
    x, w = inputs(toks, m, ids)
    i = 20
    s, e = int(w["tok_start"][i]), int(w["tok_end"][i])
    side_ids = w["sides"][0][0].copy()
    side_ids[s:e] = (side_ids[s:e] + 1) % 255  # other bytes (never 0xFF), same main token
    y, _ = inputs(toks, m, ids, side_ids=side_ids)
    a, b = logits(m, x), logits(m, y)
    assert torch.equal(a[:i], b[:i]), "an earlier token saw later bytes"
    assert not torch.allclose(a[i], b[i]), "token i must read its own bytes"


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_locality_limits_reading_to_tokens_i_minus_k_to_i(toks, k, attention):
    """One main layer and a side stream of bare embeddings (no mixing between bytes): output i then
    depends on exactly the bytes it may read, so locality is checked byte by byte."""
    m = build(toks, [dict(BYTES, n_layer=0, locality=k)], n_layer=1, attention=attention)
    ids = canonical(toks, PREFIX + PREFIX[1:])[: T + 1]
    x, w = inputs(toks, m, ids)
    base = logits(m, x)
    i = 30
    for j in range(i - k - 3, i + 2):
        s, e = int(w["tok_start"][j]), int(w["tok_end"][j])
        side_ids = w["sides"][0][0].copy()
        side_ids[s:e] = (side_ids[s:e] + 7) % 255
        y, _ = inputs(toks, m, ids, side_ids=side_ids)
        changed = not torch.allclose(base[i], logits(m, y)[i])
        assert changed == (i - k <= j <= i), f"token {i} with k={k}: bytes of token {j} seen={changed}"


def test_real_tokenizers_gpt2_main_cl100k_and_bytes_sides(gpt2):
    """GPT-2 main stream, bytes and cl100k_base side streams (from TIKTOKEN_CACHE_DIR), end to end."""
    from tokenizers import Tokenizer
    toks = {"gpt2": gpt2, "cl100k_base": Tokenizer("cl100k_base"), "bytes": Tokenizer("bytes")}
    streams = [dict(BYTES, budget=200), dict(BYTES, tokenizer="cl100k_base", budget=64, locality=1)]
    torch.manual_seed(0)
    cfg = GPTConfig(tokenizer="gpt2", vocab_size=gpt2.vocab_size, block_size=T, n_layer=2, n_head=2, n_embd=32,
                    streams=[dict(s, vocab_size=toks[s["tokenizer"]].vocab_size) for s in streams])
    m = GPT(cfg).eval()
    randomize_cross(m)
    head = gpt2.encode_any_bytes(b"\xffShe wore a straw")
    i = len(head) - 1
    outs = []
    for cont in CONTINUATIONS:
        ids = head + gpt2.encode(cont + " and the end of the story was near, as everyone knew.")
        data = gpt2.decode(ids)
        c = Corpus.from_bytes(data, gpt2, [toks["bytes"], toks["cl100k_base"]], main_ids=ids)
        w = c.window(0, T, [(toks[s["tokenizer"]], s["budget"]) for s in streams], n=min(T, len(ids) - 1))
        outs.append(logits(m, batch_inputs(collate([w], m.config.streams), "cpu")))
    assert torch.equal(outs[0][: i + 1], outs[1][: i + 1])
    assert not torch.allclose(outs[0][i + 1:], outs[1][i + 1:])
