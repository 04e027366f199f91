"""
Perturbations of text that keep its meaning for a reader of bytes: character noise (BLT's five kinds
and four kinds of typos) and non-canonical segmentation (the same bytes under other tokens).
evaluate.py measures how much each costs a model; training can use non-canonical segmentation as
augmentation (train.py's resegment). All seeded: the same inputs always give the same output.
"""
import functools
import random
import re
from string import ascii_lowercase as LETTERS

import numpy as np

# ------------------------------------------------------------------------------------------------
# character noise. Each kind changes round(rate * n) of its n eligible units, chosen by a seeded
# RNG: the same (text, kind, rate, seed) always gives the same text, and the rate is met exactly.
#   BLT's five (HellaSwag noising in the BLT paper; rate 1 of antspeak and uppercase is BLT's
#   whole-text form)
#     antspeak    words -> uppercase letters joined by spaces
#                 ("the cat" -> "T H E   C A T" at rate 1)
#     drop        characters deleted
#     randomcase  cased letters get their case flipped (BLT uses 50%)
#     repeat      non-space characters repeated, 2 to 4 times in all
#     uppercase   words uppercased
#   typos: rate is typos per letter
#     swap        two adjacent, different letters of a word exchanged
#     delete      a letter deleted
#     insert      a random letter inserted after a letter
#     substitute  a letter replaced by another (case kept)

NOISE_DEFAULTS = {"antspeak": 1.0, "drop": 0.1, "randomcase": 0.5, "repeat": 0.2, "uppercase": 1.0,
                  "swap": 0.05, "delete": 0.05, "insert": 0.05, "substitute": 0.05}
_PARTS = re.compile(r"\s+|\S+")


def _count(rate, n):
    return min(n, int(rate * n + 0.5))


def _pick(rng, candidates, rate):
    candidates = list(candidates)
    return sorted(rng.sample(candidates, _count(rate, len(candidates))))


def _letter_like(c, case):
    return c.upper() if case.isupper() else c


def noise(text, kind, rate, seed):
    """`text` with character noise of one kind at `rate` (0..1), deterministic for a seed (int or
    str)."""
    if kind not in NOISE_DEFAULTS:
        raise ValueError(f"unknown noise kind {kind!r}; kinds: {', '.join(NOISE_DEFAULTS)}")
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be between 0 and 1, got {rate}")
    rng = random.Random(f"{kind}:{seed}")
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    if kind == "drop":
        gone = set(_pick(rng, range(len(chars)), rate))
        return "".join(c for i, c in enumerate(chars) if i not in gone)
    if kind == "repeat":
        picked = set(_pick(rng, (i for i, c in enumerate(chars) if not c.isspace()), rate))
        return "".join(c * rng.randint(2, 4) if i in picked else c for i, c in enumerate(chars))
    if kind == "randomcase":
        cased = (i for i, c in enumerate(chars) if len(c.swapcase()) == 1 and c.swapcase() != c)
        for i in _pick(rng, cased, rate):
            chars[i] = chars[i].swapcase()
        return "".join(chars)
    if kind in ("uppercase", "antspeak"):
        parts = _PARTS.findall(text)  # alternating runs of whitespace and of the rest
        words = [i for i, p in enumerate(parts)
                 if not p.isspace() and (kind == "antspeak" or p.upper() != p)]
        chosen = set(_pick(rng, words, rate))
        if kind == "uppercase":
            return "".join(p.upper() if i in chosen else p for i, p in enumerate(parts))
        # whitespace between converted words is converted too, so that rate 1 is
        # " ".join(text.upper())
        near = lambda i: [j for j in (i - 1, i + 1) if 0 <= j < len(parts)]
        conv = [i in chosen or (p.isspace() and bool(near(i)) and all(j in chosen for j in near(i)))
                for i, p in enumerate(parts)]
        out, prev = [], False
        for p, c in zip(parts, conv):
            out.append((" " if c and prev else "") + (" ".join(p.upper()) if c else p))
            prev = c
        return "".join(out)
    if kind == "swap":
        pairs = [i for i in letters
                 if i + 1 < len(chars) and chars[i + 1].isalpha() and chars[i] != chars[i + 1]]
        rng.shuffle(pairs)
        k, taken = _count(rate, len(letters)), set()
        # non-overlapping pairs, as many as the rate asks (fewer if the text has no more)
        for i in pairs:
            if len(taken) == 2 * k:
                break
            if i not in taken and i + 1 not in taken:
                taken |= {i, i + 1}
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    picked = set(_pick(rng, letters, rate))
    out = []
    for i, c in enumerate(chars):
        if i not in picked:
            out.append(c)
        elif kind == "substitute":
            out.append(_letter_like(rng.choice([x for x in LETTERS if x != c.lower()]), c))
        elif kind == "insert":
            out.append(c + _letter_like(rng.choice(LETTERS), c))
        # delete: nothing
    return "".join(out)


def parse_noise(spec):
    """'drop:0.1,swap,uppercase:1' -> {kind: rate} (a kind without a rate gets its default);
    'none' -> {}."""
    if spec.strip().lower() == "none":
        return {}
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, rate = part.partition(":")
        if kind not in NOISE_DEFAULTS:
            raise SystemExit(f"error: --noise: unknown kind {kind!r}; "
                             f"kinds: {', '.join(NOISE_DEFAULTS)}")
        try:
            out[kind] = float(rate) if rate else NOISE_DEFAULTS[kind]
        except ValueError:
            raise SystemExit(f"error: --noise: rate {rate!r} of {kind} is not a number")
        if not 0 <= out[kind] <= 1:
            raise SystemExit(f"error: --noise: rate of {kind} must be between 0 and 1")
    return out

# ------------------------------------------------------------------------------------------------
# non-canonical segmentation: the same bytes, other tokens

@functools.lru_cache(maxsize=None)
def _token_id(tok, b):
    """The id of bytes b if b is a single (non-special) token of tok, else None."""
    try:
        i = tok.enc.encode_single_token(b)
    except KeyError:
        return None
    return None if i == tok.eot else i


def _cut(tok, b, choose):
    """Token bytes b as two tokens, at the valid cut that choose(cuts) picks; as single bytes if no
    cut gives two tokens."""
    cuts = [j for j in range(1, len(b))
            if _token_id(tok, b[:j]) is not None and _token_id(tok, b[j:]) is not None]
    if cuts:
        j = choose(cuts)
        return [_token_id(tok, b[:j]), _token_id(tok, b[j:])]
    return [_token_id(tok, b[j:j + 1]) for j in range(len(b))]


def noncanonical(tok, ids, rate, seed):
    """Split round(rate * n) of the n multi-byte tokens in `ids` into two smaller tokens whose bytes
    concatenate to the original's (a random valid cut; single bytes if no cut gives two tokens).
    Seeded. Returns (new ids, number of tokens split). A byte-level tokenizer has nothing to
    split."""
    # an exact count makes a token's cut depend on the tokens after it: fine for evaluate.py's probe,
    # which scores whole contexts; training uses noncanonical_per_token, whose cuts are causal
    ids = [int(i) for i in ids]
    if tok.enc is None:
        return ids, 0
    table = tok.token_bytes
    rng = random.Random(f"segment:{seed}")
    multi_byte = (i for i, t in enumerate(ids) if t != tok.eot and len(table[t]) > 1)
    chosen = set(_pick(rng, multi_byte, rate))
    out = []
    for i, t in enumerate(ids):
        out += _cut(tok, table[t], rng.choice) if i in chosen else [t]
    return out, len(chosen)


def _splitmix64(seed, positions):
    """Output number position + 1 of splitmix64 started at `seed`: a uniform 64-bit draw per
    position, computed for any position directly."""
    x = (np.asarray(positions, np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    x += np.uint64(int(seed) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def noncanonical_per_token(tok, ids, start, rate, seed):
    """Training's non-canonical segmentation of `ids`, which begin at token `start` of the corpus:
    each multi-byte token is cut with probability `rate`, as noncanonical cuts, by one draw of (seed,
    its position) that decides whether and where. A token's cut never depends on the tokens around
    it, so it is the same in every window that holds it, whatever follows. Returns the new ids."""
    ids = np.asarray(ids, np.int64)
    if tok.enc is None:
        return ids.tolist()
    draw = _splitmix64(seed, start + np.arange(len(ids)))
    # top 53 bits: whether to cut (EOT counts one byte, never cut); the rest of the draw: where
    cut = (tok.lengths[ids] > 1) & ((draw >> np.uint64(11)) * 2.0**-53 < rate)
    table, out = tok.token_bytes, []
    for t, c, d in zip(ids.tolist(), cut.tolist(), draw.tolist()):
        out += _cut(tok, table[t], lambda cuts: cuts[d % len(cuts)]) if c else [t]
    return out
