"""
Tokenizers: bytes, tiktoken encodings (GPT-2, cl100k_base), and project-trained BPEs (a small
byte-level BPE trainer writes tiktoken's .tiktoken format); plus the offline fetchers: assets come
from PyPI source packages through pip, checked by sha256, for machines that reach nothing else.

The end-of-text token always decodes to the single byte 0xFF, a value that never occurs in UTF-8.
"""
import base64
import functools
import glob
import hashlib
import heapq
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict

import numpy as np

from data import write_atomic

EOT_BYTE = 0xFF
EOT_TEXT = "<|endoftext|>"

# ------------------------------------------------------------------------------------------------
# small shared helpers

def cache_dir():
    """Where downloaded assets live (override with BYTECROSS_CACHE)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "bytecross")
    d = os.environ.get("BYTECROSS_CACHE") or default
    os.makedirs(d, exist_ok=True)
    return d


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_pypi_sdist(name, version, sha256):
    """Download a source distribution with pip (which honours the user's index settings), check it.
    pip checks the hash before it unpacks the archive, so no code of a tampered download ever runs
    (pip download builds an sdist's metadata, which runs its build code)."""
    dest = os.path.join(cache_dir(), f"{name}-{version}")
    found = glob.glob(os.path.join(dest, "*.tar.gz"))
    if not found:
        os.makedirs(dest, exist_ok=True)
        print(f"fetching {name}=={version} (source distribution) with pip ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            requirements = os.path.join(tmp, "requirements.txt")
            with open(requirements, "w") as f:
                f.write(f"{name}=={version} --hash=sha256:{sha256}\n")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--quiet", "--require-hashes", "-r", requirements, "-d", dest]
            r = subprocess.run(cmd, capture_output=True, text=True)
        found = glob.glob(os.path.join(dest, "*.tar.gz"))
        if "DO NOT MATCH THE HASHES" in r.stderr:
            raise RuntimeError(f"{name}=={version} from the package index does not have sha256 "
                               f"{sha256}: refused before any of it ran (tampered with, or a "
                               f"different upload)")
        if r.returncode != 0 or not found:
            pip_says = r.stderr.strip()[-2000:]
            raise RuntimeError(f"could not download {name}=={version} with pip:\n{pip_says}\n"
                               f"Check your network or pip index settings, or put the sdist into "
                               f"{dest}.")
    got = sha256_file(found[0])
    if got != sha256:
        raise RuntimeError(f"{found[0]} has sha256 {got}, expected {sha256}: the download is "
                           f"corrupt or was tampered with. Delete {dest} and retry.")
    return found[0]

# ------------------------------------------------------------------------------------------------
# tokenizers

# GPT-2's split pattern (tiktoken's r50k_base); used when the GPT-2 ranks come from the offline
# fallback
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$"""
                r"""|\s+(?!\S)|\s""")
# project-trained BPE: ASCII classes so that Python's `re` (training) and tiktoken (encoding) agree
PROJECT_BPE_PATTERN = r""" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
WHISPER_SDIST = ("openai-whisper", "20250625",
                 "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96")
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def _gpt2_offline():
    """GPT-2's ranks from the openai-whisper sdist on PyPI, for machines that reach only PyPI."""
    import tiktoken
    path = os.path.join(cache_dir(), "gpt2.tiktoken")
    if not os.path.exists(path) or sha256_file(path) != GPT2_RANKS_SHA256:
        sdist = fetch_pypi_sdist(*WHISPER_SDIST)
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers()
                          if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            data = tar.extractfile(member).read()
        if hashlib.sha256(data).hexdigest() != GPT2_RANKS_SHA256:
            raise RuntimeError("gpt2.tiktoken inside the openai-whisper sdist has an unexpected "
                               "checksum")
        write_atomic(path, data)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_bpe(path),
                             special_tokens={EOT_TEXT: 50256})


class Tokenizer:
    """One tokenizer: 'bytes', a tiktoken encoding name ('gpt2', 'cl100k_base'), or a .tiktoken
    file. The end-of-text token always decodes to the single byte 0xFF."""

    def __init__(self, spec):
        self.spec = spec
        self.enc = None
        if spec == "bytes":
            self.name, self.vocab_size, self.eot = "bytes", 256, EOT_BYTE
        elif spec.endswith(".tiktoken"):
            import tiktoken
            if not os.path.exists(spec):
                raise FileNotFoundError(f"tokenizer file {spec} not found "
                                        "(train one with prepare.py --train_bpe)")
            ranks = load_bpe(spec)
            self.name = os.path.basename(spec)[: -len(".tiktoken")]
            self.enc = tiktoken.Encoding(name=self.name, pat_str=PROJECT_BPE_PATTERN,
                                         mergeable_ranks=ranks,
                                         special_tokens={EOT_TEXT: len(ranks)})
        else:
            import tiktoken
            self.name = spec
            try:
                self.enc = tiktoken.get_encoding(spec)
            except ValueError as e:
                raise ValueError(f"unknown tokenizer {spec!r}: use 'bytes', a tiktoken encoding "
                                 f"name such as 'gpt2' or 'cl100k_base', or a path to a .tiktoken "
                                 f"file") from e
            except Exception as e:  # no network and no cache: GPT-2 has an offline source
                if spec != "gpt2":
                    raise RuntimeError(f"could not load tiktoken encoding {spec!r} ({e}); with no "
                                       f"network, point TIKTOKEN_CACHE_DIR at a cache that holds "
                                       f"it") from e
                self.enc = _gpt2_offline()
        if self.enc is not None:
            self.vocab_size, self.eot = self.enc.n_vocab, self.enc.eot_token
        self._table = self._lengths = None

    @property
    def token_bytes(self):
        """bytes of every id (EOT -> 0xFF, unused ids -> b'')"""
        if self._table is None:
            if self.enc is None:
                self._table = [bytes([i]) for i in range(256)]
            else:
                table = []
                for i in range(self.vocab_size):
                    try:
                        table.append(self.enc.decode_single_token_bytes(i))
                    except KeyError:
                        table.append(b"")
                table[self.eot] = bytes([EOT_BYTE])
                self._table = table
        return self._table

    @property
    def lengths(self):
        """byte length of every id, as an array"""
        if self._lengths is None:
            self._lengths = np.array([len(b) for b in self.token_bytes], dtype=np.int64)
        return self._lengths

    @functools.cached_property
    def fingerprint(self):
        """identifies the vocabulary and split pattern: data made with another tokenizer is
        refused"""
        h = hashlib.sha256(self.spec.encode() if self.enc is None else self.enc._pat_str.encode())
        for b in self.token_bytes:
            h.update(len(b).to_bytes(2, "little") + b)
        return h.hexdigest()[:16]

    @property
    def id_dtype(self):
        return np.uint16 if self.vocab_size <= 65536 else np.uint32

    def encode(self, text):
        """Text to ids, with no special tokens (a literal '<|endoftext|>' in text is plain text)."""
        if self.enc is None:
            return list(text.encode("utf-8"))
        return self.enc.encode_ordinary(text)

    def encode_any_bytes(self, data):
        """Bytes that may hold EOT bytes or invalid UTF-8: invalid stretches fall back to one id per
        byte."""
        ids = []
        for piece in re.split(rb"(\xff)", data):
            if piece == b"\xff":
                ids.append(self.eot)
            elif piece:
                try:
                    ids.extend(self.encode(piece.decode("utf-8")))
                except UnicodeDecodeError:
                    ids.extend(self.enc.encode_single_token(bytes([b])) if self.enc else b
                               for b in piece)
        return ids

    def decode(self, ids):
        table = self.token_bytes
        return b"".join(table[i] for i in ids)


def train_bpe(texts, vocab_size):
    """A byte-level BPE trainer (GPT-2 style merges within pre-split chunks). Returns tiktoken
    ranks. Pair counts are updated only for the words a merge touches; a lazy max-heap finds the
    next pair."""
    assert vocab_size >= 256, "vocab_size must be at least 256 (all single bytes)"
    chunks = Counter()
    for text in texts:
        chunks.update(m.encode("utf-8") for m in re.findall(PROJECT_BPE_PATTERN, text))
    words = [[bytes([b]) for b in w] for w in chunks]
    counts = list(chunks.values())
    pairs, where = Counter(), defaultdict(set)  # pair -> count; pair -> indices of words holding it

    def tally(i, sign):
        for pair in zip(words[i], words[i][1:]):
            pairs[pair] += sign * counts[i]
            if sign > 0:
                where[pair].add(i)

    for i in range(len(words)):
        tally(i, +1)
    # most frequent first; ties go to the smallest pair, so training is deterministic
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab_size and heap:
        n, (a, b) = heapq.heappop(heap)
        if -n != pairs[a, b] or n == 0:
            continue  # stale entry: this pair's count changed since it was pushed
        ranks[a + b] = len(ranks)
        changed = set()
        for i in where.pop((a, b)):
            changed.update(zip(words[i], words[i][1:]))
            tally(i, -1)
            w, j = words[i], 0
            while j < len(w) - 1:
                if w[j] == a and w[j + 1] == b:
                    w[j:j + 2] = [a + b]
                j += 1
            tally(i, +1)
            changed.update(zip(w, w[1:]))
        del pairs[a, b]
        for pair in changed - {(a, b)}:  # counts went up or down: re-queue them at their new counts
            if pairs[pair] > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
    return ranks


def load_bpe(path):
    """Ranks of a .tiktoken file, read directly: tiktoken's own loader caches every file by its path
    in TIKTOKEN_CACHE_DIR, so a file retrained at the same path would load its old ranks."""
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except ValueError:
                    raise ValueError(f"{path} line {n} is not '<base64 token> <rank>'") from None
    return ranks


def save_bpe(ranks, path):
    write_atomic(path, "".join(base64.b64encode(token).decode() + " " + str(rank) + "\n"
                               for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])))
