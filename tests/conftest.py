"""Shared fixtures: tiny tokenizers trained in-process, hard text, tiny prepared datasets."""
import json
import os
import random
import signal
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tokenizers import Tokenizer, save_bpe, train_bpe  # noqa: E402

# documents that stress alignment: multi-byte UTF-8, emoji (4 bytes), CRLF, tabs, runs of spaces,
# a literal end-of-text string (plain text, not the token), combining marks, no-break spaces
HARD_DOCS = [
    "Hello wörld! Straße, naïve café; 日本語のテキスト。\r\nNew line\r\n\r\n\ttabbed  two  spaces",
    "Emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and <|endoftext|> as plain text.\n",
    "e\u0301 combining, no\u00a0break, zero\u200bwidth, math ∑∫√, Ελληνικά, русский.",
    "   leading spaces and trailing spaces   ",
    "strawberry straw berry strawberries\nthe the the cat sat on the mat.\n" * 3,
]
PLAIN = ("The quick brown fox jumps over the lazy dog. A straw hat and a strawberry tart. "
         "She sells sea shells by the sea shore; the shells she sells are surely sea shells. ") * 4


def pytest_configure(config):
    # FlexAttention warns that CPU runs are unfused: expected, the CPU only checks what it computes
    config.addinivalue_line("filterwarnings", "ignore:flex_attention called without torch.compile")


def tiny_bpe(path, vocab_size, texts=None):
    """A BPE trained here on a little text (no network, no files from elsewhere)."""
    if not os.path.exists(path):
        save_bpe(train_bpe(texts or [PLAIN] + HARD_DOCS, vocab_size), path)
    return Tokenizer(path)


@pytest.fixture(scope="session")
def toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return {"bpe300": tiny_bpe(str(d / "bpe300.tiktoken"), 300),
            "bpe400": tiny_bpe(str(d / "bpe400.tiktoken"), 400),
            "bytes": Tokenizer("bytes")}


@pytest.fixture(scope="session")
def gpt2():
    """The real GPT-2 BPE, from TIKTOKEN_CACHE_DIR (tests that need it are skipped without it)."""
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.skip(NO_TIKTOKEN_CACHE)
    return Tokenizer("gpt2")


# the suite stays offline: tests of the real ranks read them from a tiktoken cache, or tell how to make one
NO_TIKTOKEN_CACHE = (
    "TIKTOKEN_CACHE_DIR is not set. Tests of the real gpt2 and cl100k_base ranks read them offline from a "
    "tiktoken cache; fill one once (this downloads them): TIKTOKEN_CACHE_DIR=~/.cache/tiktoken python -c "
    "\"import tiktoken; [tiktoken.get_encoding(e) for e in ('gpt2', 'cl100k_base')]\" and run pytest with "
    "the same TIKTOKEN_CACHE_DIR. (prepare.py leaves only GPT-2's ranks: in tiktoken's default cache, "
    f"{os.path.join(tempfile.gettempdir(), 'data-gym-cache')}, or, where tiktoken cannot download them, in "
    f"{os.path.join(os.environ.get('BYTECROSS_CACHE', '~/.cache/bytecross'), 'gpt2.tiktoken')}, "
    "which is no tiktoken cache.)")


def write_jsonl(path, docs):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return str(path)


# ---- a tiny dataset and one short training run, shared by the training and sampling tests

WORDS = ("the a straw hat strawberry tart sea shell shore she sells surely quick brown fox jumps over lazy dog "
         "and of to in is was for on with as by at from his her they were had not but all one this which").split()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, toks):
    """A small corpus of generated sentences, prepared with the tiny BPE as main tokenizer."""
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 300))).capitalize() + "." for _ in range(120)]
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "train.jsonl", docs[:110])
    write_jsonl(d / "val.jsonl", docs[110:])
    import prepare
    prepare.main(["--train", str(d / "train.jsonl"), "--val", str(d / "val.jsonl"), "--out", str(d / "prepared"),
                  "--tokenizer", toks["bpe300"].spec, "--workers", "1"])
    return str(d / "prepared")


def args(dataset, toks, out_dir, **over):
    cfg = dict(data_dir=dataset, out_dir=str(out_dir), tokenizer=toks["bpe300"].spec, block_size=32, n_layer=2,
               n_head=2, n_embd=32, batch_size=4, total_batch_size=128, max_iters=30, eval_interval=10,
               eval_tokens=256, log_interval=1, warmup_iters=5, learning_rate=3e-3, min_lr=3e-4, device="cpu",
               streams=[dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=16, budget=96,
                             packed_budget=64)],
               pack=True)  # training packs the bytes, as on a GPU (with SDPA here)
    cfg.update(over)
    return [f"--{k}={v!r}" if not isinstance(v, str) else f"--{k}={v}" for k, v in cfg.items()]


def run_inprocess(argv):
    import train
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        train.main(argv)
    finally:  # train.py installs its own Ctrl-C handler
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def val_losses(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r["val_loss"] for r in map(json.loads, f) if "val_loss" in r]


def weights(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["model"]


@pytest.fixture(scope="session")
def trained(dataset, toks, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    run_inprocess(args(dataset, toks, out))
    return str(out)


def write_array(path, array, header):
    """A data file holding `array` under a fresh, valid header: damage that only the checks of the
    contents can see (prepare.py writes through data.StreamWriter)."""
    import numpy as np
    from data import ChunkCRC, make_header
    body = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        f.write(make_header(header, array.dtype, len(array), ChunkCRC().update(body).digest()))
        f.write(body.tobytes())
