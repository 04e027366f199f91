"""
The on-disk data format, aligned windows, and who may see what.

Every stream is a sequence of elements over one shared UTF-8 byte array. An element has a byte
range [start, end) and a byte offset `known`: the end of the shortest prefix of the bytes that fixes
the element (its bytes and its boundaries). Main token i may read side element m only if
known[m] <= end of token i. For bytes, known = end. For a side BPE stream, text is cut into words
at ASCII whitespace and each word is tokenized on its own; whether a word is complete is decided by
the byte after it, so known = word end + 1. (Tokenizing the whole document would let a later word
change where an earlier side token ends: a side token " straw" ending with main token " straw"
exists only if "berry" does not follow. That leaks the future.)

Documents are joined by the end-of-text token, whose bytes in the byte stream are the single byte
0xFF, a value that never occurs in UTF-8. Tokenizers live in tokenizers.py.
"""
import hashlib
import json
import os
import re
import zlib

import numpy as np


FORMAT_VERSION = 2                # 2: CRC-32 checksums and the prepare run's id in every header
HEADER_BYTES = 1 << 16            # room for the checksums of a 500 GB file
CHUNK_BYTES = 1 << 26             # one CRC-32 per 64 MB of an array's body
INT32_MAX = 2**31 - 1

# ------------------------------------------------------------------------------------------------
# streams: a document's elements with byte offsets

WHITESPACE = b" \t\n\r\x0b\x0c"  # word boundaries of side streams (and of sample.py's prompts)
_WORD = re.compile(rb"\xff|[%s]*[^%s\xff]+|[%s]+" % (WHITESPACE, WHITESPACE, WHITESPACE))


def utf8(text):
    """A document's bytes; lone surrogates (half a pair, from cut JSON text) become U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def write_atomic(path, content):
    """Write text or bytes to path through a temporary file: a crash leaves the old file or the new
    one, never half of one."""
    with open(path + ".tmp", "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    os.replace(path + ".tmp", path)


def main_stream(tok, data):
    """Main-stream ids and start offsets (len+1) for bytes `data` (may hold EOT bytes)."""
    ids = np.asarray(tok.encode_any_bytes(data), dtype=np.int64)
    return ids, np.concatenate([[0], np.cumsum(tok.lengths[ids])])


def side_stream(tok, data):
    """Side-stream ids, start offsets (len+1) and known offsets (len) for bytes `data`, for a
    tokenizer side stream (a bytes stream is the data itself). Each word (a run of whitespace and
    the non-whitespace after it) is tokenized on its own."""
    ids, counts, known_at = [], [], []
    for m in _WORD.finditer(data):
        wid = tok.encode_any_bytes(m.group())
        ids.extend(wid)
        counts.append(len(wid))
        # a word is complete once the byte after it is seen; EOT is complete by itself
        known_at.append(m.end() if m.group() == b"\xff" else m.end() + 1)
    ids = np.asarray(ids, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(tok.lengths[ids])])
    assert starts[-1] == len(data)
    return ids, starts, np.repeat(np.asarray(known_at, dtype=np.int64), counts)

# ------------------------------------------------------------------------------------------------
# on-disk format: one file per array, a JSON header padded to HEADER_BYTES, then the raw array

class ChunkCRC:
    """CRC-32 of each CHUNK_BYTES piece of a byte stream that arrives in pieces of any size."""

    def __init__(self):
        self.crcs, self.crc, self.filled = [], 0, 0

    def update(self, buffer):
        view = memoryview(buffer).cast("B")
        while len(view):
            take = min(len(view), CHUNK_BYTES - self.filled)
            self.crc = zlib.crc32(view[:take], self.crc)
            self.filled, view = self.filled + take, view[take:]
            if self.filled == CHUNK_BYTES:
                self.crcs.append(self.crc)
                self.crc = self.filled = 0
        return self

    def digest(self):
        """the checksums as one hex string, 8 digits per chunk"""
        return "".join(f"{c:08x}" for c in self.crcs + ([self.crc] if self.filled else []))


def make_header(header, dtype, count, crc32):
    header = dict(header, format="bytecross", version=FORMAT_VERSION, dtype=np.dtype(dtype).name,
                  count=int(count), chunk_bytes=CHUNK_BYTES, crc32=crc32)
    blob = json.dumps(header).encode()
    assert len(blob) < HEADER_BYTES, "header too large"
    return blob.ljust(HEADER_BYTES, b" ")


class DataError(Exception):
    """Bad or missing prepared data; the message says what to do."""


class MissingDataFile(DataError):
    """A data file that does not exist (as opposed to one that cannot be read)."""


def read_array(path):
    """Memory-map one array and check its header, size and checksums."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise MissingDataFile(f"missing data file {path}: "
                              "run prepare.py to create it (see README, Data)") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied (cannot read it): check the permissions of the "
                        f"file and its folders") from None
    try:  # the JSON object at the start (a file of an older format has a shorter header)
        header = json.JSONDecoder().raw_decode(raw.decode("utf-8", "replace"))[0]
        assert header.get("format") == "bytecross"
    except Exception:
        raise DataError(f"{path} is not a bytecross data file (corrupt, or from another tool): "
                        f"delete it and run prepare.py again") from None
    if header["version"] != FORMAT_VERSION:
        raise DataError(f"{path} has data format version {header['version']}, this code reads "
                        f"version {FORMAT_VERSION}: run prepare.py again")
    dtype = np.dtype(header["dtype"])
    expected = HEADER_BYTES + header["count"] * dtype.itemsize
    size = os.path.getsize(path)
    if size != expected:
        raise DataError(f"{path} is {size} bytes but its header promises {expected}: the file is "
                        f"truncated or corrupt; run prepare.py again")
    if header["count"] == 0:
        return np.zeros(0, dtype=dtype), header
    body = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES)
    # checked at ~1.5 GB/s; the pages stay cached for training
    for k, i in enumerate(range(0, len(body), CHUNK_BYTES)):
        if f"{zlib.crc32(body[i:i + CHUNK_BYTES]):08x}" != header["crc32"][8 * k:8 * k + 8]:
            start = HEADER_BYTES + i
            end = HEADER_BYTES + min(i + CHUNK_BYTES, len(body))
            raise DataError(f"{path} is damaged (the checksum of bytes {start:,} to {end:,} "
                            f"differs): run prepare.py again")
    return body.view(dtype), header


def check_values(path, array, vocab_size=None, step=1 << 24):
    """ids below the vocabulary size, or offsets that never go backwards; in slices, so memory
    stays small."""
    for i in range(0, len(array), step):
        # one element of overlap: order across slices is checked too
        x = np.asarray(array[i:i + step + 1])
        if vocab_size is not None and len(x) and int(x.max()) >= vocab_size:
            raise DataError(f"{path} is damaged: id {int(x.max())} is outside the vocabulary of "
                            f"{vocab_size}; run prepare.py again")
        if vocab_size is None and (x[1:] < x[:-1]).any():
            j = i + int(np.argmax(x[1:] < x[:-1]))
            raise DataError(f"{path} is damaged: offsets go backwards at element {j + 1}; "
                            f"run prepare.py again")


def prepared_run(data_dir):
    """The id of the prepare.py run that wrote data_dir (from its meta.json; None without one)."""
    try:
        os.stat(data_dir)
    except FileNotFoundError:
        interrupted = os.path.isdir(os.path.normpath(data_dir) + ".replaced")
        if interrupted:
            advice = ("prepare.py was interrupted while replacing it; "
                      "run prepare.py again (it restores or replaces it)")
        else:
            advice = "run prepare.py (see README, Data)"
        raise DataError(f"data directory {data_dir} does not exist: " + advice) from None
    except PermissionError:
        raise DataError(f"data directory {data_dir}: permission denied: check the permissions of "
                        f"its folders") from None
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir} is a file, not a data directory made by prepare.py")
    meta = os.path.join(data_dir, "meta.json")
    try:
        with open(meta) as f:
            return json.load(f).get("run")
    except FileNotFoundError:
        return None
    except PermissionError:
        raise DataError(f"{meta}: permission denied") from None
    except ValueError:
        raise DataError(f"{meta} is not JSON: run prepare.py again") from None


def data_digest(data_dir):
    """Identifies a prepared folder's text by the checksums in its headers (None if they cannot be
    read): a checkpoint records it, so resuming on other data is noticed."""
    h = hashlib.sha256()
    for split in ("train", "val"):
        try:
            with open(os.path.join(data_dir, f"{split}.bytes.bin"), "rb") as f:
                header = json.loads(f.read(HEADER_BYTES))
            h.update(f"{split} {header['count']} {header['crc32']}\n".encode())
        except (OSError, ValueError, KeyError):
            return None
    return h.hexdigest()[:16]


def stream_key(tok, side):
    return tok.name + (".side" if side else "")


class Corpus:
    """One split: the byte array, the main stream, and any side streams, all aligned by byte
    offsets."""

    def __init__(self, data, main_ids, main_starts, sides, eot):
        # sides: stream key -> (ids, starts, known); the byte stream needs none, it is `data` itself
        self.data, self.ids, self.starts = data, main_ids, main_starts
        self.sides, self.eot = sides, eot
        self.n_tokens, self.n_bytes = len(main_ids), len(data)

    @classmethod
    def load(cls, data_dir, split, main_tok, side_toks):
        """Open prepared files and check that they match the tokenizers the model expects, that they
        come from one run of prepare.py, and that their contents are intact (checksums, ids,
        offsets)."""
        run = prepared_run(data_dir)
        data, hb = read_array(os.path.join(data_dir, f"{split}.bytes.bin"))
        # without a meta.json, the files of the split must agree among themselves
        run = run or hb["run"]

        def check_run(path, h):
            if h["run"] != run:
                raise DataError(f"{path} was written by another run of prepare.py than the rest of "
                                f"{data_dir}: run prepare.py again")

        check_run(os.path.join(data_dir, f"{split}.bytes.bin"), hb)

        def open_stream(tok, side):
            key, arrays = stream_key(tok, side), []
            for part in ("ids", "starts", "known") if side else ("ids", "starts"):
                path = os.path.join(data_dir, f"{split}.{key}.{part}.bin")
                try:
                    arr, h = read_array(path)
                except MissingDataFile:
                    flag = "--side" if side else "--tokenizer"
                    kind = "side" if side else "main"
                    raise DataError(f"{data_dir} has no {kind} stream for tokenizer {tok.name!r} "
                                    f"(missing {path}); prepare it with prepare.py "
                                    f"{flag}={tok.spec}") from None
                check_run(path, h)
                if h["fingerprint"] != tok.fingerprint:
                    raise DataError(f"{path} was prepared with tokenizer {h['tokenizer']!r} "
                                    f"(fingerprint {h['fingerprint']}), but the model uses "
                                    f"{tok.spec!r} (fingerprint {tok.fingerprint}): prepare the "
                                    f"data with the model's tokenizer, or train with the one the "
                                    f"data was made for")
                if h["n_bytes"] != hb["count"]:
                    raise DataError(f"{path} does not belong to {split}.bytes.bin "
                                    f"(byte counts differ): run prepare.py again")
                check_values(path, arr, tok.vocab_size if part == "ids" else None)
                arrays.append(arr)
            if len(arrays[1]) != len(arrays[0]) + 1 or int(arrays[1][-1]) != len(data):
                raise DataError(f"{split}.{key} offsets do not match its ids: run prepare.py again")
            return arrays

        ids, starts = open_stream(main_tok, False)
        sides = {stream_key(t, True): tuple(open_stream(t, True))
                 for t in side_toks if t.spec != "bytes"}
        return cls(data, ids, starts, sides, main_tok.eot)

    @classmethod
    def from_bytes(cls, data, main_tok, side_toks, main_ids=None):
        """In-memory corpus (sampling, evaluation, tests). `data` may hold EOT bytes between
        documents; `main_ids`, if given, must spell `data` (for example a non-canonical
        segmentation)."""
        if main_ids is None:
            ids, starts = main_stream(main_tok, data)
        else:
            ids = np.asarray(main_ids, dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(main_tok.lengths[ids])])
            if main_tok.decode(ids) != bytes(data):
                raise ValueError("main ids do not spell the given bytes")
        sides = {stream_key(t, True): side_stream(t, data) for t in side_toks if t.spec != "bytes"}
        return cls(np.frombuffer(bytes(data), dtype=np.uint8), ids, starts, sides, main_tok.eot)

    def n_windows(self, T):
        return max(0, (self.n_tokens - 1) // T)

    def window(self, p, T, streams, n=None):
        """Arrays for one window: T input tokens from token p, their next tokens as targets.

        n < T real tokens pads the window's end (padding is later than every real token, so it
        changes nothing before it). Offsets are relative to the window's first byte. Each stream
        keeps its first `budget` elements: what a token sees then depends only on what precedes it,
        never on how long the rest of the window is. Padding gets offsets INT32_MAX, so no token
        ever reads it."""
        n = T if n is None else n
        s = np.asarray(self.starts[p:p + n + 2], dtype=np.int64)
        b0, b1 = int(s[0]), int(s[n])
        out = {"idx": np.zeros(T, np.int64), "targets": np.full(T, -1, np.int64),
               "target_bytes": np.zeros(T, np.int32),
               "tok_start": np.full(T, INT32_MAX, np.int32),
               "tok_end": np.full(T, INT32_MAX, np.int32)}
        out["idx"][:n] = self.ids[p:p + n]
        out["tok_start"][:n], out["tok_end"][:n] = s[:n] - b0, s[1:n + 1] - b0
        # the next tokens exist: targets, and their text bytes for bits-per-byte
        if len(s) == n + 2:
            tgt = np.asarray(self.ids[p + 1:p + n + 1], dtype=np.int64)
            out["targets"][:n] = tgt
            out["target_bytes"][:n] = np.where(tgt == self.eot, 0, s[2:] - s[1:-1])
        out["sides"], lost = [], []
        for tok, budget in streams:
            if tok.spec == "bytes":  # element j is byte j: it ends, and is known, at j + 1
                m0, m1 = b0, b1
                k = min(m1 - m0, budget)
                ids, ends, known = self.data[m0:m0 + k], np.arange(m0 + 1, m0 + k + 1), None
            else:
                sid, sst, skn = self.sides[stream_key(tok, True)]
                # search with a value of the array's own dtype: a Python int makes NumPy convert the
                # whole (memory-mapped) array first, ~30 ms per call on a 50 MB corpus
                at = sst.dtype.type
                # the element holding byte b0
                m0 = int(np.searchsorted(sst, at(b0), side="right")) - 1
                m1 = int(np.searchsorted(sst, at(b1), side="left"))
                k = min(m1 - m0, budget)
                ids, ends, known = sid[m0:m0 + k], sst[m0 + 1:m0 + k + 1], skn[m0:m0 + k]
            x = np.zeros(budget, np.int64)
            e = np.full(budget, INT32_MAX, np.int32)
            x[:k] = ids
            e[:k] = np.asarray(ends, np.int64) - b0
            kn = e.copy()
            if known is not None:
                kn[:k] = np.asarray(known, np.int64) - b0
            out["sides"].append((x, e, kn))
            # tokens that cannot see all of their own bytes because the budget ran out
            if k < m1 - m0:
                last_end = e[k - 1] if k else 0
                lost.append(int((out["tok_end"][:n] > last_end).sum()))
            else:
                lost.append(0)
        out["lost"] = np.asarray(lost, np.int64)
        return out


def resegmented_window(corpus, p, T, main_tok, side_toks, budgets, rate, seed):
    """Window p of `corpus` under a non-canonical segmentation, the same bytes: each multi-byte token
    cut in two with probability `rate`, decided from the run `seed` and its position in the corpus
    alone (perturb.noncanonical_per_token); the first T + 1 tokens after cutting. Cuts only push
    tokens out at the end, so a window's first tokens never depend on what follows them."""
    from perturb import noncanonical_per_token
    ids = noncanonical_per_token(main_tok, corpus.ids[p:p + T + 1], p, rate, seed)[:T + 1]
    data = main_tok.decode(ids)
    n = min(T, len(ids) - 1)
    return Corpus.from_bytes(data, main_tok, side_toks, main_ids=ids).window(0, T, budgets, n=n)


def make_batch(entries, side_toks, streams, T, pack=False, trim=False, pin=False):
    """A batch from windows `entries` = [(corpus, p, n)] (n real tokens from token p, None for T),
    for side streams with tokenizers `side_toks` and configs `streams` (model.StreamConfig)."""
    kept = budgets(side_toks, streams)
    return collate([c.window(p, T, kept, n=n) for c, p, n in entries], streams, pack, trim, pin)


def budgets(side_toks, streams):
    """(tokenizer, budget) per side stream: what Corpus.window keeps of each."""
    return [(tok, sc.budget) for tok, sc in zip(side_toks, streams)]


def visible_intervals(w, s, locality):
    """Who token i of window w reads in side stream s: the elements [lo_i, hi_i) of the window's
    kept elements. hi_i counts elements with known <= end(token i); with locality k, lo_i counts
    those that end at or before start(token i-k). Both bounds are nondecreasing in i. Padding
    tokens read nothing."""
    _, end, known = w["sides"][s]
    kept = int((end != INT32_MAX).sum())
    n = int((w["tok_end"] != INT32_MAX).sum())
    hi = np.full(len(w["tok_end"]), kept, np.int64)
    lo = hi.copy()
    hi[:n] = np.searchsorted(known[:kept], w["tok_end"][:n], side="right")
    lo[:n] = 0
    if locality is not None:
        k = int(locality)
        lo[k:n] = np.searchsorted(end[:kept], w["tok_start"][:max(0, n - k)], side="right")
    return lo, hi, kept


def collate(windows, streams, pack=False, trim=False, pin=False):
    """Stack windows (Corpus.window) into a batch of torch tensors and decide, once, who sees what.

    Side stream s becomes rows of elements: one row per window, padded to the budget (or, with
    trim, to the longest window), or with pack=True (streams with a packed_budget) one row holding
    all windows back to back in B * packed_budget slots, so that padding costs nothing. Per stream
    the batch holds `ids`, `pos` (index in its window: rotary phase of the stream's own attention),
    `end` (byte offset in its window: rotary phase of cross-attention) and the visibility of each
    query as an interval [lo, hi) of its row:
    - self_lo, self_hi: element j attends to the elements of its own window in [j - window + 1, j];
    - cross_lo, cross_hi: main token i reads what visible_intervals allows (queries: the B*T tokens,
      in rows like the elements).
    Packed windows that do not fit are cut; a token that would have read a cut element is left out
    of the loss (target -1, counted in `dropped`): no kept position ever depends on the cut."""
    import torch
    B, T = len(windows), len(windows[0]["idx"])
    out = {key: np.stack([w[key] for w in windows]) for key in windows[0] if key != "sides"}
    out["dropped"] = np.zeros(len(streams), np.int64)
    sides = []
    for s, sc in enumerate(streams):
        vis = [visible_intervals(w, s, sc.locality) for w in windows]
        packed = pack and sc.packed_budget > 0
        if packed:
            R, L = 1, B * sc.packed_budget
        elif trim:
            R, L = B, max(1, max(kept for _, _, kept in vis))
        else:
            R, L = B, len(windows[0]["sides"][s][0])
        rows = {key: np.zeros((R, L), np.int64) for key in ("ids", "pos", "end", "seg")}
        rows["end"][:] = INT32_MAX
        rows["seg"][:] = np.arange(L)  # a padding slot is a window of its own
        cross = np.zeros((2, R, B * T // R), np.int64)
        offset = 0
        for b, (w, (lo, hi, kept)) in enumerate(zip(windows, vis)):
            r, q0 = (0, b * T) if packed else (b, 0)
            if not packed:
                offset = 0
            keep = min(kept, L - offset)
            if keep < kept:  # packed and out of room: tokens that read past the cut leave the loss
                cut = hi > keep
                out["targets"][b][cut] = -1
                out["target_bytes"][b][cut] = 0
                out["dropped"][s] += int((cut & (w["tok_end"] != INT32_MAX)).sum())
                lo, hi = np.minimum(lo, keep), np.minimum(hi, keep)
            ids, end, _ = w["sides"][s]
            sl = slice(offset, offset + keep)
            rows["ids"][r, sl], rows["end"][r, sl] = ids[:keep], end[:keep]
            rows["pos"][r, sl], rows["seg"][r, sl] = np.arange(keep), offset
            cross[:, r, q0:q0 + T] = offset + lo, offset + hi
            offset += keep
        j = np.arange(L)
        sides.append({"ids": rows["ids"], "pos": rows["pos"], "end": rows["end"],
                      "self_lo": np.maximum(j - sc.window + 1, rows["seg"]),
                      "self_hi": np.broadcast_to(j + 1, (R, L)),
                      "cross_lo": cross[0], "cross_hi": cross[1]})

    def tensor(a, dtype=None):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))
        return t.pin_memory() if pin else t

    batch = {key: tensor(a) for key, a in out.items()}
    batch["sides"] = [{key: tensor(a, np.int64 if key == "ids" else np.int32)
                       for key, a in side.items()}
                      for side in sides]
    return batch


def batch_inputs(batch, device):
    """Model inputs from a batch (collate), moved to `device`."""
    to = lambda t: t.to(device, non_blocking=True)
    return dict(idx=to(batch["idx"]), targets=to(batch["targets"]), tok_end=to(batch["tok_end"]),
                sides=[{k: to(t) for k, t in side.items()} for side in batch["sides"]])


def useful_counts(batch):
    """Per side stream, what a batch really computes per main token (no padding, keys actually
    visible): elements per token, keys per element in the stream's own attention, keys per token in
    cross-attention."""
    real = batch["tok_end"] != INT32_MAX
    tokens = max(1, int(real.sum()))
    out = []
    for side in batch["sides"]:
        elements = side["end"] != INT32_MAX
        own = side["self_hi"] - side["self_lo"]  # keys per element in the stream's own attention
        self_keys = own[elements].double().mean().item() if elements.any() else 0
        cross = (side["cross_hi"] - side["cross_lo"]).view(real.shape)[real]
        out.append(dict(elements=int(elements.sum()) / tokens, self_keys=self_keys,
                        cross_keys=cross.double().mean().item()))
    return out
