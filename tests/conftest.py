"""Shared fixtures: tiny tokenizers trained in-process, hard text, tiny prepared datasets."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import Tokenizer, save_bpe, train_bpe  # noqa: E402

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
        pytest.skip("TIKTOKEN_CACHE_DIR is not set")
    return Tokenizer("gpt2")


def write_jsonl(path, docs):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return str(path)
