"""The on-disk format and aligned windows: prepared files spell hard text exactly, and say clearly what is wrong."""
import json
import os
import shutil

import numpy as np
import pytest

import data
import tokenizers
import prepare
from conftest import HARD_DOCS, PLAIN, tiny_bpe, write_array, write_jsonl
from data import INT32_MAX, Corpus, DataError
from tokenizers import Tokenizer

VAL_DOCS = [PLAIN[:200], HARD_DOCS[1], ""]  # an empty document is just its end-of-text byte


def prepare_hard(tmp_path, main, sides=(), train_docs=HARD_DOCS, val_docs=VAL_DOCS):
    """HARD_DOCS -> train, VAL_DOCS -> val, through prepare's command line; returns the output folder."""
    out = str(tmp_path / "out")
    prepare.main(["--train", write_jsonl(tmp_path / "train.jsonl", train_docs),
                  "--val", write_jsonl(tmp_path / "val.jsonl", val_docs), "--out", out,
                  "--tokenizer", main.spec, "--side", *[t.spec for t in sides], "--workers", "1"])
    return out


def assert_spells(data_bytes, tok, ids, starts):
    """Every element's byte range holds exactly that element's bytes, and the ranges tile the stream."""
    ids, starts = np.asarray(ids, np.int64), np.asarray(starts, np.int64)
    assert len(starts) == len(ids) + 1 and starts[0] == 0 and starts[-1] == len(data_bytes)
    table = tok.token_bytes
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        assert data_bytes[a:b] == table[ids[i]], f"{tok.name} element {i} does not spell bytes {a}:{b}"
    # the end-of-text id sits exactly on the 0xFF bytes
    eot_at = starts[:-1][ids == tok.eot]
    assert eot_at.tolist() == [i for i, b in enumerate(data_bytes) if b == 0xFF]


def check_round_trip(out, main, sides):
    for split, docs in (("train", HARD_DOCS), ("val", VAL_DOCS)):
        c = Corpus.load(out, split, main, sides)
        got = bytes(c.data)
        assert got == b"".join(b"\xff" + d.encode() for d in docs)
        assert [d.decode() for d in got.split(b"\xff")[1:]] == docs
        assert c.ids.dtype == main.id_dtype
        assert_spells(got, main, c.ids, c.starts)
        for t in sides:
            ids, starts, known = (np.asarray(a, np.int64) for a in c.sides[data.stream_key(t, True)])
            assert c.sides[data.stream_key(t, True)][0].dtype == t.id_dtype
            assert_spells(got, t, ids, starts)
            assert len(known) == len(ids)
            assert (known >= starts[1:]).all(), "a side element is known before its last byte is read"
            assert (np.diff(known) >= 0).all(), "known offsets must be nondecreasing"
            # a word is fixed only by the byte after it (it might go on), the end-of-text token by itself
            word, ends = ids != t.eot, starts[1:]
            assert (known[word] > ends[word]).all() and (known[~word] == ends[~word]).all()
            assert not word[-1] or known[-1] == len(got) + 1, "the split's last word is never complete"
    return c


def test_round_trip_tiny_bpe(tmp_path, toks):
    check_round_trip(prepare_hard(tmp_path, toks["bpe300"], [toks["bpe400"]]), toks["bpe300"], [toks["bpe400"]])


def test_round_trip_bytes_main_and_gpt2_side(tmp_path, toks, gpt2):
    check_round_trip(prepare_hard(tmp_path, toks["bytes"], [gpt2]), toks["bytes"], [gpt2])


def test_round_trip_gpt2(tmp_path, toks, gpt2):
    c = check_round_trip(prepare_hard(tmp_path, gpt2, [toks["bpe300"]]), gpt2, [toks["bpe300"]])
    # the literal "<|endoftext|>" in HARD_DOCS[1] is plain text: only the document starts hold the EOT token
    assert int((np.asarray(c.ids) == gpt2.eot).sum()) == len(VAL_DOCS)


def test_retrained_bpe_file_is_read_again(tmp_path):
    """A .tiktoken file rewritten at the same path must not load its old ranks (tiktoken caches by path)."""
    path = str(tmp_path / "bpe.tiktoken")
    tokenizers.save_bpe(tokenizers.train_bpe(["aaaa aaaa"], 260), path)
    first = Tokenizer(path)
    tokenizers.save_bpe(tokenizers.train_bpe(["zzzz zzzz"], 260), path)
    second = Tokenizer(path)
    assert second.fingerprint != first.fingerprint and b"zz" in second.token_bytes


# ------------------------------------------------------------------------------------------------
# vocabularies above 65,535 ids

@pytest.fixture(scope="module")
def pairs_tok(tmp_path_factory):
    """All single bytes and all 65,536 byte pairs: a valid BPE (each pair's halves exist) with ids > 65535."""
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({bytes([a, b]): 256 + 256 * a + b for a in range(256) for b in range(256)})
    path = str(tmp_path_factory.mktemp("pairs") / "pairs.tiktoken")
    tokenizers.save_bpe(ranks, path)
    tok = Tokenizer(path)
    assert tok.vocab_size == 256 + 65536 + 1 and tok.id_dtype == np.uint32
    return tok


@pytest.mark.parametrize("main, side", [("pairs", "bpe300"), ("bytes", "pairs"), ("bpe300", "pairs")])
def test_round_trip_vocab_above_uint16(tmp_path, toks, pairs_tok, main, side):
    tk = dict(toks, pairs=pairs_tok)
    c = check_round_trip(prepare_hard(tmp_path, tk[main], [tk[side]]), tk[main], [tk[side]])
    ids = c.ids if main == "pairs" else c.sides[data.stream_key(pairs_tok, True)][0]
    assert ids.dtype == np.uint32 and int(np.max(ids)) > 65535, "ids above 65535 must survive the file"


def test_round_trip_cl100k_side(tmp_path, toks):
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.skip("TIKTOKEN_CACHE_DIR is not set")
    cl100k = Tokenizer("cl100k_base")
    assert cl100k.id_dtype == np.uint32
    c = check_round_trip(prepare_hard(tmp_path, toks["bpe300"], [cl100k]), toks["bpe300"], [cl100k])
    assert c.sides["cl100k_base.side"][0].dtype == np.uint32


# ------------------------------------------------------------------------------------------------
# Corpus.window

TEXT = b"".join(b"\xff" + d.encode() for d in HARD_DOCS + [PLAIN])


@pytest.fixture(scope="module")
def corpus(toks):
    return Corpus.from_bytes(TEXT, toks["bpe300"], [toks["bpe400"]])


def side_arrays(w, s):
    x, e, kn = w["sides"][s]
    real = e != INT32_MAX
    return x[real], e[real], kn[real]


@pytest.mark.parametrize("stream, small", [("bytes", 40), ("bpe400", 12)])
def test_window_budget_keeps_the_first_elements(toks, corpus, stream, small):
    T, p, big = 48, 7, 4096
    full = corpus.window(p, T, [(toks[stream], big)])
    cut = corpus.window(p, T, [(toks[stream], small)])
    fx, fe, fk = side_arrays(full, 0)
    assert len(fx) < big and (full["sides"][0][0][len(fx):] == 0).all()  # padding: id 0, offsets INT32_MAX
    assert (full["sides"][0][2][len(fx):] == INT32_MAX).all()
    assert len(fx) > small and full["lost"][0] == 0
    x, e, kn = cut["sides"][0]
    assert (x == fx[:small]).all() and (e == fe[:small]).all() and (kn == fk[:small]).all()
    # lost: tokens that end after the last kept element, so cannot read all of their own bytes
    lost = int(cut["lost"][0])
    assert 0 < lost < T and lost == int((cut["tok_end"] > e[-1]).sum())
    # the kept elements do not depend on the tokens after them: a shorter window keeps the same ones
    for n in (T // 2, T // 4):
        short = corpus.window(p, T, [(toks[stream], small)], n=n)
        sx, se, _ = side_arrays(short, 0)
        assert (sx == fx[:len(sx)]).all() and (se == fe[:len(se)]).all()
        assert short["tok_end"][n - 1] <= se[-1] or len(sx) == small
    if stream == "bytes":  # the byte stream is the text itself, each byte known once read
        b0 = int(corpus.starts[p])
        assert bytes(x.astype(np.uint8)) == TEXT[b0:b0 + small] and (e == np.arange(1, small + 1)).all()
        assert (kn == e).all()


def test_window_padding_and_targets(toks, corpus):
    T, n = 64, 40
    eot_pos = np.flatnonzero(np.asarray(corpus.ids) == corpus.eot)
    p = int(eot_pos[1]) - 5  # the window holds an end-of-text target
    w = corpus.window(p, T, [(toks["bytes"], 512)], n=n)
    ids, starts = np.asarray(corpus.ids), np.asarray(corpus.starts)
    assert (w["idx"][:n] == ids[p:p + n]).all() and (w["targets"][:n] == ids[p + 1:p + n + 1]).all()
    assert (w["idx"][n:] == 0).all() and (w["targets"][n:] == -1).all()
    assert (w["tok_start"][n:] == INT32_MAX).all() and (w["tok_end"][n:] == INT32_MAX).all()
    assert (w["tok_end"][:n] == starts[p + 1:p + n + 1] - starts[p]).all() and w["tok_start"][0] == 0
    is_eot = w["targets"][:n] == corpus.eot
    assert is_eot.any() and (w["target_bytes"][:n][is_eot] == 0).all()
    lengths = toks["bpe300"].lengths[w["targets"][:n]]
    assert (w["target_bytes"][:n][~is_eot] == lengths[~is_eot]).all() and (w["target_bytes"][n:] == 0).all()
    # the byte stream stops at the last real token's end: no byte of a padding position is read
    _, e, _ = side_arrays(w, 0)
    assert e[-1] == w["tok_end"][n - 1]


def test_window_side_bpe_includes_the_element_straddling_the_start(toks):
    c = Corpus.from_bytes(TEXT, toks["bytes"], [toks["bpe400"]])  # byte tokens: a window may start anywhere
    sid, sst, skn = (np.asarray(a, np.int64) for a in c.sides["bpe400.side"])
    m = next(i for i in range(len(sid)) if sst[i + 1] - sst[i] >= 3)  # a side token of 3+ bytes
    p = int(sst[m]) + 1  # main token p is that side token's second byte
    w = c.window(p, 32, [(toks["bpe400"], 64)])
    x, e, kn = side_arrays(w, 0)
    assert x[0] == sid[m] and e[0] == sst[m + 1] - p and kn[0] == skn[m] - p
    assert (x[1:] == sid[m + 1:m + len(x)]).all()
    assert e[-1] >= w["tok_end"][-1] > e[-2], "the last element holds the window's last byte"


def test_window_cost_does_not_grow_with_the_corpus(tmp_path, toks):
    """A window reads only its own slice of the memory-mapped files. (Searching a uint32 memmap with a
    Python int once made NumPy convert the whole array: 1 s per batch of cl100k windows on Gutenberg.)"""
    import tracemalloc
    docs = [PLAIN * 60] * 12  # ~0.5 MB: whole-array copies would dwarf one window's few KB
    c = Corpus.load(prepare_hard(tmp_path, toks["bytes"], [toks["bpe400"]], train_docs=docs), "train",
                    toks["bytes"], [toks["bpe400"]])
    assert c.sides["bpe400.side"][1].dtype == np.uint32 and isinstance(c.sides["bpe400.side"][1], np.memmap)
    c.window(1000, 256, [(toks["bpe400"], 300), (toks["bytes"], 300)])  # warm up
    tracemalloc.start()
    try:
        for p in (1000, c.n_tokens // 2, c.n_tokens - 300):
            c.window(p, 256, [(toks["bpe400"], 300), (toks["bytes"], 300)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c.data.nbytes > 400_000 and peak < 100_000, f"a window allocated {peak:,} bytes"


# ------------------------------------------------------------------------------------------------
# clear errors

@pytest.fixture(scope="module")
def prepared(tmp_path_factory, toks):
    return prepare_hard(tmp_path_factory.mktemp("prepared"), toks["bpe300"], [toks["bpe400"]])


@pytest.fixture
def copy(prepared, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(prepared, out)
    return out


def rewrite_header(path, **changes):
    with open(path, "r+b") as f:
        header = json.loads(f.read(data.HEADER_BYTES))
        f.seek(0)
        f.write(json.dumps(dict(header, **changes)).encode().ljust(data.HEADER_BYTES, b" "))


def test_loads_when_intact(copy, toks):
    c = Corpus.load(copy, "train", toks["bpe300"], [toks["bpe400"]])
    assert c.n_bytes == sum(len(d.encode()) + 1 for d in HARD_DOCS)


def test_error_missing_data_dir(tmp_path, toks):
    with pytest.raises(DataError, match="does not exist: run prepare.py"):
        Corpus.load(str(tmp_path / "nowhere"), "train", toks["bpe300"], [])


def test_error_missing_side_stream(copy, toks, pairs_tok):
    with pytest.raises(DataError, match=r"no side stream for tokenizer 'pairs'.*--side="):
        Corpus.load(copy, "train", toks["bpe300"], [pairs_tok])


def test_error_missing_file(copy, toks):
    os.remove(os.path.join(copy, "val.bpe400.side.known.bin"))
    with pytest.raises(DataError, match=r"missing .*val.bpe400.side.known.bin.*--side="):
        Corpus.load(copy, "val", toks["bpe300"], [toks["bpe400"]])


@pytest.mark.parametrize("change", [-1, 1])
def test_error_truncated_file(copy, toks, change):
    path = os.path.join(copy, "train.bpe300.ids.bin")
    os.truncate(path, os.path.getsize(path) + change)
    with pytest.raises(DataError, match="truncated or corrupt"):
        Corpus.load(copy, "train", toks["bpe300"], [])


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 5000, b"\xff\xfe not json", json.dumps([1, 2]).encode(),
                                     json.dumps({"format": "numpy"}).encode()])
def test_error_garbage_header(copy, toks, garbage):
    with open(os.path.join(copy, "train.bytes.bin"), "wb") as f:
        f.write(garbage)
    with pytest.raises(DataError, match="not a bytecross data file"):
        Corpus.load(copy, "train", toks["bpe300"], [])


def test_error_other_format_version(copy, toks):
    rewrite_header(os.path.join(copy, "train.bpe300.starts.bin"), version=data.FORMAT_VERSION + 1)
    with pytest.raises(DataError, match=f"format version {data.FORMAT_VERSION + 1}, this code reads version "
                                        f"{data.FORMAT_VERSION}"):
        Corpus.load(copy, "train", toks["bpe300"], [])


def test_error_tokenizer_name_mismatch(copy, toks):
    with pytest.raises(DataError, match=r"no main stream for tokenizer 'bpe400'.*--tokenizer="):
        Corpus.load(copy, "train", toks["bpe400"], [])


def test_error_tokenizer_fingerprint_mismatch(copy, tmp_path, toks):
    other = tiny_bpe(str(tmp_path / "bpe300.tiktoken"), 300, texts=["another text, other merges " * 20])
    assert other.name == "bpe300" and other.fingerprint != toks["bpe300"].fingerprint
    with pytest.raises(DataError, match=f"fingerprint {toks['bpe300'].fingerprint}.*fingerprint {other.fingerprint}"):
        Corpus.load(copy, "train", other, [])
    other_side = tiny_bpe(str(tmp_path / "bpe400.tiktoken"), 400, texts=["another text, other merges " * 20])
    with pytest.raises(DataError, match=r"side.ids.bin was prepared with tokenizer .*bpe400"):
        Corpus.load(copy, "train", toks["bpe300"], [other_side])


@pytest.mark.parametrize("part", ["starts", "ids"])
def test_error_stream_of_another_bytes_file(copy, toks, part):
    shutil.copy(os.path.join(copy, f"val.bpe300.{part}.bin"), os.path.join(copy, f"train.bpe300.{part}.bin"))
    with pytest.raises(DataError, match=r"does not belong to train.bytes.bin"):
        Corpus.load(copy, "train", toks["bpe300"], [])


def test_error_offsets_do_not_end_at_the_byte_count(copy, toks):
    path = os.path.join(copy, "train.bpe300.starts.bin")
    arr, header = data.read_array(path)
    bad = np.array(arr)
    bad[-1] -= 1
    del arr
    write_array(path, bad, {k: v for k, v in header.items() if k not in ("dtype", "count")})
    with pytest.raises(DataError, match="offsets do not match its ids"):
        Corpus.load(copy, "train", toks["bpe300"], [])


def test_train_bpe_matches_a_direct_recount():
    """The incremental trainer picks, merge after merge, the pair a full recount finds most frequent."""
    import re
    from collections import Counter
    from tokenizers import PROJECT_BPE_PATTERN, train_bpe
    texts = [PLAIN, *HARD_DOCS]
    ranks = train_bpe(texts, 300)
    words = Counter(m.encode() for t in texts for m in re.findall(PROJECT_BPE_PATTERN, t))
    split = {w: [bytes([b]) for b in w] for w in words}
    for token in sorted(ranks, key=ranks.get)[256:]:
        pairs = Counter()
        for w, parts in split.items():
            for a, b in zip(parts, parts[1:]):
                pairs[a, b] += words[w]
        best = max(pairs.values())
        a, b = min(p for p, n in pairs.items() if n == best)  # ties: the smallest pair
        assert a + b == token
        for parts in split.values():
            j = 0
            while j < len(parts) - 1:
                if parts[j] == a and parts[j + 1] == b:
                    parts[j:j + 2] = [a + b]
                j += 1
