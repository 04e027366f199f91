"""Trust: no code runs from a checkpoint or a package, no bad value or damaged data file silently spoils a
run, an interrupted prepare.py never leaves a mixed data set, and resumed or concurrent runs say what they
do. Each test fails on the code before issue 11."""
import gzip
import json
import lzma
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import pytest
import torch

import data
import tokenizers
import evaluate
import prepare
import runtime
import sample
import train
from conftest import PLAIN, ROOT, args, run_inprocess, weights, write_array, write_jsonl
from data import Corpus, DataError
from tokenizers import Tokenizer

BYTES = Tokenizer("bytes")

# ------------------------------------------------------------------------------------------------
# no code runs from a checkpoint


class RunsCode:
    """Unpickling this creates a file: the proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_malicious_checkpoint_is_refused_and_runs_nothing(trained, dataset, toks, tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = torch.load(os.path.join(trained, "ckpt.pt"), weights_only=True)
    ckpt["config"]["payload"] = RunsCode(str(marker))
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save(ckpt, evil / "ckpt.pt")
    before = (evil / "ckpt.pt").read_bytes()
    (tmp_path / "text.txt").write_text(PLAIN)
    entry_points = {
        "sample.py": lambda: sample.main(["--out_dir", str(evil), "--device", "cpu"]),
        "evaluate.py": lambda: evaluate.main([str(evil), "--text", str(tmp_path / "text.txt"), "--device",
                                              "cpu", "--skip", "noise", "segmentation", "tasks", "probes",
                                              "--json", str(tmp_path / "eval.json")]),
        "train.py --init_from=resume": lambda: run_inprocess([f"--out_dir={evil}", "--init_from=resume"])}
    for name, run in entry_points.items():
        with pytest.raises(SystemExit, match=r"objects other than tensors and plain data \(io.open\); refused"
                           ) as e:
            run()
        assert not marker.exists(), f"{name} ran code from the checkpoint"
        assert str(evil / "ckpt.pt") in str(e.value), f"{name}: the message names the file"
    assert (evil / "ckpt.pt").read_bytes() == before, "the evidence is not overwritten"


def test_checkpoints_hold_plain_data_only(trained):
    """What train.py writes loads with weights_only=True, with every process's RNG state."""
    ckpt = torch.load(os.path.join(trained, "ckpt.pt"), weights_only=True)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 1 and ckpt["data"]

# ------------------------------------------------------------------------------------------------
# no code runs from a downloaded package before its hash is checked


def fake_index(folder, marker):
    """A package index folder holding one sdist whose build backend creates `marker` when it runs."""
    src = folder / "src" / "tamperedpkg-1.0"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                        'backend-path = ["."]\n')
    (src / "backend.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import os\n"
        "def prepare_metadata_for_build_wheel(d, config_settings=None):\n"
        "    os.makedirs(os.path.join(d, 'tamperedpkg-1.0.dist-info'))\n"
        "    with open(os.path.join(d, 'tamperedpkg-1.0.dist-info', 'METADATA'), 'w') as f:\n"
        "        f.write('Metadata-Version: 2.1\\nName: tamperedpkg\\nVersion: 1.0\\n')\n"
        "    return 'tamperedpkg-1.0.dist-info'\n")
    (folder / "links").mkdir()
    with tarfile.open(folder / "links" / "tamperedpkg-1.0.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="tamperedpkg-1.0")
    return tokenizers.sha256_file(folder / "links" / "tamperedpkg-1.0.tar.gz")


def test_sdist_hash_is_checked_before_its_code_runs(tmp_path, monkeypatch):
    marker = tmp_path / "build-code-ran"
    sha = fake_index(tmp_path, marker)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    monkeypatch.setenv("BYTECROSS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=f"does not have sha256 {'0' * 64}: refused before any of it ran"):
        tokenizers.fetch_pypi_sdist("tamperedpkg", "1.0", "0" * 64)
    assert not marker.exists(), "the package's build code ran before its hash was checked"
    assert not os.listdir(tmp_path / "cache" / "tamperedpkg-1.0")
    assert tokenizers.fetch_pypi_sdist("tamperedpkg", "1.0", sha).endswith("tamperedpkg-1.0.tar.gz")  # the genuine

# ------------------------------------------------------------------------------------------------
# values that would spoil a run stop it at once, one line per bad value


@pytest.mark.parametrize("over, message", [
    (dict(batch_size=0), "error: batch_size=0: must be an integer >= 1"),
    (dict(block_size=-1), "error: block_size=-1: must be an integer >= 1"),
    (dict(eval_interval=0), "error: eval_interval=0: must be an integer >= 1"),
    (dict(log_interval=0), "error: log_interval=0: must be an integer >= 1"),
    (dict(total_batch_size=0), "error: total_batch_size=0: must be an integer >= 1"),
    (dict(eval_tokens=0), "error: eval_tokens=0: must be an integer >= 1"),
    (dict(learning_rate=-1e-3), "error: learning_rate=-0.001: must be >= 0"),
    (dict(min_lr=-1e-4), "error: min_lr=-0.0001: must be >= 0"),
    (dict(grad_clip=-1.0), "error: grad_clip=-1.0: must be >= 0 (0: no clipping)"),
    (dict(dropout=1.0), "error: dropout=1.0: must be in [0, 1)"),
    (dict(dtype="float16"), "error: dtype='float16': must be 'auto', 'bfloat16' or 'float32' (float16 would "
                            "need loss scaling, which train.py does not do)"),
    (dict(compile="yes"), "error: compile='yes': must be True, False or 'auto'"),
    (dict(n_head=3, streams=[]), "error: n_embd=32, n_head=3: n_embd must split into n_head heads of even "
                                 "size"),
    (dict(init_from="resum"), "error: init_from='resum': must be 'scratch', 'resume' or 'auto'"),
])
def test_bad_values_stop_with_one_line(dataset, toks, tmp_path, over, message):
    with pytest.raises(SystemExit) as e:
        run_inprocess(args(dataset, toks, tmp_path / "out", **over))
    assert str(e.value) == message
    assert not (tmp_path / "out").exists(), "nothing is written for a run that cannot start"


def test_every_bad_value_gets_its_line(dataset, toks, tmp_path):
    with pytest.raises(SystemExit) as e:
        run_inprocess(args(dataset, toks, tmp_path / "out", batch_size=0, learning_rate=-1.0, seed=-5))
    assert str(e.value).splitlines() == ["error: batch_size=0: must be an integer >= 1",
                                         "error: seed=-5: must be an integer >= 0",
                                         "error: learning_rate=-1.0: must be >= 0"]


def test_bfloat16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(SystemExit, match="this GPU has no bfloat16; use --dtype=float32"):
        runtime.check_dtype("bfloat16", "cuda")
    runtime.check_dtype("bfloat16", "cpu")  # CPU autocast runs bfloat16: what is logged is what runs


def test_grad_clip_zero_means_no_clipping(dataset, toks, tmp_path):
    """grad_clip=0 once scaled every gradient to zero: the model never learned."""
    common = dict(max_iters=3, eval_interval=100)
    run_inprocess(args(dataset, toks, tmp_path / "off", grad_clip=0.0, **common))
    run_inprocess(args(dataset, toks, tmp_path / "huge", grad_clip=1e9, **common))
    a, b = weights(tmp_path / "off"), weights(tmp_path / "huge")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_mistakes_name_the_place(tmp_path):
    with pytest.raises(SystemExit, match=r"key 'max_iter' \(command line\); did you mean max_iters\?"):
        train.parse_config(["--max_iter=5"])
    with pytest.raises(SystemExit, match=r"^error: batch_size='many' \(command line\): must be an integer$"):
        train.parse_config(["--batch_size=many"])
    bad = tmp_path / "bad.py"
    bad.write_text("n_layer = 4\nn_head = 4\nn_embd = (256\nbatch_size = 8\n")
    with pytest.raises(SystemExit, match=rf"^error: {bad} line 3: '\(' was never closed$"):
        train.parse_config([str(bad)])
    bad.write_text("n_layer = 4\nn_head = n_layer * heads_per_layer\n")
    with pytest.raises(SystemExit, match=rf"^error: {bad} line 2: NameError: name 'heads_per_layer' is not"):
        train.parse_config([str(bad)])
    cfg, _ = train.parse_config(["--out_dir=2024", "--compile=False", "--device=cpu"])
    assert cfg["out_dir"] == "2024" and cfg["compile"] is False, "a folder named like a number stays a name"

# ------------------------------------------------------------------------------------------------
# prepare.py killed at any point leaves the complete old data set or the complete new one


OLD_DOCS, NEW_DOCS = [f"old document {i}: {PLAIN[i:i + 40]}" for i in range(3)], ["new", "documents", "here"]
USER_FILES = {"bpe64.tiktoken": "a tokenizer trained into the folder\n", "notes.txt": "my notes\n"}


def names_and_docs(out):
    """The folder's file names and the documents of both splits, as train.py's loader reads them."""
    docs = {s: bytes(Corpus.load(str(out), s, BYTES, []).data).split(b"\xff")[1:] for s in ("train", "val")}
    return sorted(os.listdir(out)), docs


def prep(out, *argv):
    prepare.main(["--out", str(out), "--tokenizer", "bytes", "--workers", "1", *map(str, argv)])


def prepare_in_child(out, argv, kill_at):
    """prepare.main in a forked process that SIGKILLs itself at its kill_at-th step that touches the disk.
    Returns True if it was killed, False if it got to the end first."""
    pid = os.fork()
    if pid == 0:
        calls = [0]

        def deadly(f):
            def wrapper(*a, **k):
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return f(*a, **k)
            return wrapper
        steps = [(os, "rename"), (os, "replace"), (os, "link"), (os, "makedirs"), (json, "dump"),
                 (shutil, "rmtree"), (prepare.SplitWriter, "add"), (prepare.StreamWriter, "finish")]
        for owner, name in steps:
            setattr(owner, name, deadly(getattr(owner, name)))
        try:
            sys.stderr = open(os.devnull, "w")
            prep(out, *argv)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def test_prepare_killed_anywhere_leaves_old_or_new_set(tmp_path, toks):
    pristine, out = tmp_path / "pristine", tmp_path / "out"
    prep(pristine, "--side", toks["bpe300"].spec, "--train", write_jsonl(tmp_path / "old.jsonl", OLD_DOCS),
         "--val", write_jsonl(tmp_path / "ov.jsonl", ["v"]))
    for name, text in USER_FILES.items():
        (pristine / name).write_text(text)
    old = names_and_docs(pristine)
    assert "train.bpe300.side.ids.bin" in old[0]
    new_args = ["--train", write_jsonl(tmp_path / "new.jsonl", NEW_DOCS),
                "--val", write_jsonl(tmp_path / "nv.jsonl", ["w"])]
    seen = []
    for kill_at in range(1, 200):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        killed = prepare_in_child(out, new_args, kill_at)
        if not out.exists():  # stopped between renaming the old folder away and the new one in
            assert (tmp_path / "out.replaced").is_dir()
            with pytest.raises(DataError, match="prepare.py was interrupted while replacing it; run prepare"):
                Corpus.load(str(out), "train", BYTES, [])
            seen.append("none")
            prep(out, *new_args)  # repairs it
            assert not (tmp_path / "out.replaced").exists() and not (tmp_path / "out.incomplete").exists()
        else:
            state = names_and_docs(out)
            new = {"train": [d.encode() for d in NEW_DOCS], "val": [b"w"]}
            assert state == old or state[1] == new, kill_at
            seen.append("old" if state == old else "new")
            if state != old:  # the new set: no stale side stream of the old run, the user's files kept
                assert not [n for n in state[0] if "bpe300" in n], state[0]
        for name, text in USER_FILES.items():
            assert (out / name).read_text() == text
        if not killed:
            break
    assert seen[0] == "old" and seen[-1] == "new" and "none" in seen and len(seen) > 8, seen
    prep(out, *new_args)  # cleans up after a kill
    assert sorted(os.listdir(tmp_path)) == ["new.jsonl", "nv.jsonl", "old.jsonl", "out", "ov.jsonl",
                                            "pristine"], "nothing unfinished or replaced stays behind"


def test_files_of_two_prepare_runs_are_never_read_together(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, docs in ((a, OLD_DOCS), (b, NEW_DOCS)):
        src = write_jsonl(tmp_path / "docs.jsonl", docs)
        prep(out, "--train", src, "--val", src)
    for name in os.listdir(b):
        if name.startswith("val."):
            shutil.copy(b / name, a / name)  # a whole split of another run: consistent in itself
    with pytest.raises(DataError, match=r"val.bytes.bin was written by another run of prepare.py than the"):
        Corpus.load(str(a), "val", BYTES, [])
    os.remove(a / "meta.json")  # without meta.json, the files of one split must still agree
    shutil.copy(b / "train.bytes.ids.bin", a / "train.bytes.ids.bin")
    with pytest.raises(DataError, match=r"train.bytes.ids.bin was written by another run"):
        Corpus.load(str(a), "train", BYTES, [])


def test_rerun_without_a_side_stream_removes_its_files_and_keeps_others(tmp_path, toks):
    src = write_jsonl(tmp_path / "docs.jsonl", OLD_DOCS)
    prep(tmp_path / "out", "--train", src, "--val", src, "--side", toks["bpe300"].spec)
    (tmp_path / "out" / "notes.txt").write_text("mine")
    prep(tmp_path / "out", "--train", src, "--val", src)
    assert sorted(os.listdir(tmp_path / "out")) == ["meta.json", "notes.txt"] + sorted(
        f"{s}.{a}.bin" for s in ("train", "val") for a in ("bytes", "bytes.ids", "bytes.starts"))


def test_prepare_refuses_to_replace_a_folder_with_folders(tmp_path):
    (tmp_path / "out" / "project").mkdir(parents=True)
    src = write_jsonl(tmp_path / "docs.jsonl", OLD_DOCS)
    with pytest.raises(SystemExit, match=r"holds folders \(project\); .* give --out a folder of its own"):
        prepare.main(["--out", str(tmp_path / "out"), "--tokenizer", "bytes", "--train", src, "--val", src])

def test_prepare_on_a_full_disk_says_so_and_changes_nothing(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", OLD_DOCS)
    prep(tmp_path / "out", "--train", src, "--val", src)
    before = names_and_docs(tmp_path / "out")
    big = write_jsonl(tmp_path / "big.jsonl", [PLAIN * 200] * 4)
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))  # no file grows past 100 KB: a full disk
    try:
        with pytest.raises(SystemExit, match=rf"could not write {tmp_path}/out.incomplete \(\[Errno 27\] "
                                             rf"File too large\); {tmp_path}/out is unchanged"):
            prep(tmp_path / "out", "--train", big, "--val", src)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert names_and_docs(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path)) == ["big.jsonl", "docs.jsonl", "out"]

# ------------------------------------------------------------------------------------------------
# damaged contents are found when the data is loaded, with one message naming the file


@pytest.fixture
def prepared_copy(dataset, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(dataset, out)
    return out


def test_flipped_bits_are_found(prepared_copy, toks):
    path = prepared_copy / "train.bpe300.ids.bin"
    body = np.memmap(path, dtype=np.uint8, mode="r+", offset=data.HEADER_BYTES)
    flips = np.random.default_rng(0).choice(len(body), 200, replace=False)
    body[flips] ^= np.uint8(4)  # ids stay below the vocabulary: only the checksum can tell
    body.flush()
    del body
    with pytest.raises(DataError, match=rf"{path} is damaged \(the checksum of bytes 65,536 to .* differs\): "
                                        r"run prepare.py again"):
        Corpus.load(str(prepared_copy), "train", toks["bpe300"], [])


@pytest.mark.parametrize("part, change, message", [
    ("ids", lambda a: a.__setitem__(5, 40000), r"id 40000 is outside the vocabulary of 301"),
    ("starts", lambda a: a.__setitem__(7, a[9]), r"offsets go backwards at element 8"),
])
def test_bad_values_with_a_good_checksum_are_found(prepared_copy, toks, part, change, message):
    """Checksums show damage after prepare.py; ids and offsets are checked too (a bug, or another tool)."""
    path = str(prepared_copy / f"train.bpe300.{part}.bin")
    arr, header = data.read_array(path)
    bad = np.array(arr)
    del arr
    change(bad)
    write_array(path, bad, {k: v for k, v in header.items() if k not in ("dtype", "count", "crc32")})
    with pytest.raises(DataError, match=f"train.bpe300.{part}.bin is damaged: {message}"):
        Corpus.load(str(prepared_copy), "train", toks["bpe300"], [])


def test_files_of_the_previous_format_are_refused(prepared_copy, toks):
    path = prepared_copy / "train.bytes.bin"
    blob = path.read_bytes()
    header = json.loads(blob[:data.HEADER_BYTES])
    old = {k: v for k, v in header.items() if k not in ("crc32", "chunk_bytes", "run")}
    path.write_bytes(json.dumps(dict(old, version=1)).encode().ljust(4096) + blob[data.HEADER_BYTES:])
    with pytest.raises(DataError, match="has data format version 1, this code reads version 2: run prepare"):
        Corpus.load(str(prepared_copy), "train", toks["bpe300"], [])

# ------------------------------------------------------------------------------------------------
# unreadable files and folders: "permission denied", never "missing" and never a traceback


def unprivileged(fn):
    """str of what fn() raises (or 'no error'), run as a user whom file permissions stop: this one, or
    'nobody' in a forked process when the tests run as root (root reads everything)."""
    def outcome():
        try:
            fn()
            return "no error"
        except (Exception, SystemExit) as e:
            return f"{type(e).__name__}: {e}"
    if os.geteuid() != 0:
        return outcome()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, outcome().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result = f.read()
    os.waitpid(pid, 0)
    return result


@pytest.fixture
def shared_dir():
    """A folder anyone may enter and write (tmp_path's parents are private to the user running the tests)."""
    d = tempfile.mkdtemp()
    os.chmod(d, 0o777)
    yield d
    os.chmod(d, 0o777)
    for root, dirs, _ in os.walk(d):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777)
    shutil.rmtree(d)


def test_unreadable_data_says_permission_denied(dataset, toks, shared_dir):
    folder = os.path.join(shared_dir, "data")
    shutil.copytree(dataset, folder)
    os.chmod(folder, 0o755)
    load = lambda: Corpus.load(folder, "train", toks["bpe300"], [])
    assert unprivileged(load) == "no error"
    os.chmod(os.path.join(folder, "train.bpe300.ids.bin"), 0)
    assert unprivileged(load) == (f"DataError: {folder}/train.bpe300.ids.bin: permission denied (cannot read "
                                  f"it): check the permissions of the file and its folders")
    os.chmod(os.path.join(folder, "train.bpe300.ids.bin"), 0o644)
    os.chmod(folder, 0)
    assert unprivileged(load).startswith(f"DataError: {folder}/meta.json: permission denied")
    os.chmod(folder, 0o755)
    os.chmod(shared_dir, 0o711)  # the folder above can be entered, not listed: fine
    assert unprivileged(load) == "no error"
    os.chmod(shared_dir, 0)
    assert unprivileged(load).startswith(f"DataError: data directory {folder}: permission denied")


def test_unreadable_sources_say_permission_denied(shared_dir):
    src = os.path.join(shared_dir, "src")
    os.makedirs(os.path.join(src, "sub"))
    for name in ("a.txt", "sub/b.txt"):
        with open(os.path.join(src, name), "w") as f:
            f.write(PLAIN)
    os.chmod(src, 0o777)
    out = os.path.join(shared_dir, "out")
    run = lambda: prepare.main(["--train", src, "--out", out, "--tokenizer", "bytes", "--workers", "1"])
    os.chmod(os.path.join(src, "sub"), 0)
    assert unprivileged(run) == f"SystemExit: error: {src}/sub: permission denied"
    os.chmod(os.path.join(src, "sub"), 0o755)
    os.chmod(os.path.join(src, "sub", "b.txt"), 0)
    assert unprivileged(run) == f"SystemExit: error: {src}/sub/b.txt: permission denied"


@pytest.mark.parametrize("suffix, opener", [(".jsonl.xz", lzma.open), (".jsonl.gz", gzip.open)])
def test_truncated_compressed_source_is_named(tmp_path, suffix, opener):
    path = tmp_path / f"docs{suffix}"
    with opener(path, "wt") as f:
        for i in range(2000):
            f.write(json.dumps({"text": f"document {i} {PLAIN}"}) + "\n")
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(SystemExit, match=rf"^error: {path} is truncated or corrupt \("):
        prep(tmp_path / "out", "--train", path)
    assert sorted(os.listdir(tmp_path)) == [path.name], "nothing half-made stays behind"

# ------------------------------------------------------------------------------------------------
# resume: the original options, said out loud when they change; auto-resume; one run per out_dir


def log_records(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_warns_about_changed_options_and_data(dataset, toks, tmp_path, capsys):
    out = tmp_path / "out"
    run_inprocess(args(dataset, toks, out, max_iters=10))
    capsys.readouterr()
    run_inprocess([f"--out_dir={out}", "--init_from=resume", "--max_iters=12", "--learning_rate=0.001",
                   "--dropout=0.1"])  # dropout shapes no weight: it may change too
    printed = capsys.readouterr().out
    assert ("warning: resuming with options that differ from the checkpoint's (which are used otherwise):\n"
            "  dropout: 0.0 -> 0.1\n  learning_rate: 0.003 -> 0.001\n  max_iters: 10 -> 12\n") in printed
    changed = {"dropout": [0.0, 0.1], "learning_rate": [0.003, 0.001], "max_iters": [10, 12]}
    assert {"step": 10, "resumed": True, "changed": changed} in log_records(out)
    other = tmp_path / "other"  # other text, same tokenizer
    prepare.main(["--train", write_jsonl(tmp_path / "o.jsonl", [PLAIN * 20] * 3), "--val",
                  write_jsonl(tmp_path / "ov.jsonl", [PLAIN * 20]), "--out", str(other),
                  "--tokenizer", toks["bpe300"].spec, "--workers", "1"])
    moved = tmp_path / "moved"  # the same data in another place
    shutil.copytree(dataset, moved)
    run_inprocess([f"--out_dir={out}", "--init_from=resume", "--max_iters=13", f"--data_dir={moved}"])
    printed = capsys.readouterr().out
    assert f"data_dir: '{dataset}' -> '{moved}'" in printed and "  data: " not in printed
    run_inprocess([f"--out_dir={out}", "--init_from=resume", "--max_iters=14", f"--data_dir={other}"])
    printed = capsys.readouterr().out
    assert f"  data: 'the data the checkpoint was trained on' -> 'other data in {other}'" in printed


def test_init_from_auto_starts_or_resumes(dataset, toks, tmp_path, capsys):
    out = tmp_path / "out"
    run_inprocess(args(dataset, toks, out, max_iters=10, init_from="auto"))
    assert "resumed" not in capsys.readouterr().out
    run_inprocess(args(dataset, toks, out, max_iters=20, init_from="auto"))
    printed = capsys.readouterr().out
    assert f"resumed from {out}/ckpt.pt at step 10" in printed and "step 20/20" in printed
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 20


def test_log_never_repeats_a_step_after_a_crash(dataset, toks, tmp_path, monkeypatch):
    """A run killed after its checkpoint at step 10 had logged steps 11 and 12; the resumed run runs them
    again. The log keeps each step once (the evaluation at step 10 and the resume record too, even
    after a resume that crashed in the same place)."""
    out = tmp_path / "out"

    def crash_at_13(*a, **k):
        if str(a[0]).startswith("step 13/"):
            raise RuntimeError("crash")  # as a SIGKILL: no checkpoint, nothing after this line
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="crash"):
        m.setattr(train, "print", crash_at_13, raising=False)
        run_inprocess(args(dataset, toks, out, max_iters=20))
    assert [r["step"] for r in log_records(out) if "loss" in r][-1] == 12
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="crash"):  # the resume crashes too
        m.setattr(train, "print", crash_at_13, raising=False)
        run_inprocess([f"--out_dir={out}", "--init_from=resume"])
    run_inprocess([f"--out_dir={out}", "--init_from=resume"])
    records = log_records(out)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in records if "val_loss" in r] == [0, 10, 20]
    assert [r["step"] for r in records if r.get("resumed")] == [10]


def test_second_run_into_an_out_dir_is_refused_and_sigterm_exits_143(dataset, toks, tmp_path):
    out = tmp_path / "out"
    long_run = args(dataset, toks, out, max_iters=100000, eval_interval=1000)
    p = subprocess.Popen([sys.executable, "train.py"] + long_run, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in p.stdout:
            if line.startswith("step 2/"):
                break
        for init_from in ("scratch", "auto"):  # scratch before the first checkpoint, and auto, both refused
            with pytest.raises(SystemExit, match=rf"another training run \(pid {p.pid}\) is using {out}"):
                run_inprocess(args(dataset, toks, out, init_from=init_from))
        p.send_signal(signal.SIGTERM)
        rest = p.communicate(timeout=300)[0]
    finally:
        p.kill()
    assert p.returncode == 143, rest
    assert "stopped at step" in rest and (out / "ckpt.pt").exists()
    run_inprocess(args(dataset, toks, out, init_from="resume", max_iters=1))  # the lock went with the process


def test_full_disk_keeps_the_checkpoint_and_no_tmp(dataset, toks, tmp_path):
    """The resumed run trains before it first needs to write; the failed write leaves the old checkpoint."""
    out = tmp_path / "out"
    run_inprocess(args(dataset, toks, out, max_iters=10))
    before = (out / "ckpt.pt").read_bytes()
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, limits[1]))  # no file grows: a full disk
    try:
        with pytest.raises(SystemExit) as e:
            run_inprocess([f"--out_dir={out}", "--init_from=resume", "--max_iters=20"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(e.value).startswith(f"error: could not write {out}/ckpt.pt ([Errno 27] File too large); the "
                                   f"previous checkpoint is intact")
    assert sorted(os.listdir(out)) == ["ckpt.pt", "log.jsonl", "train.lock"]
    assert (out / "ckpt.pt").read_bytes() == before
    assert [r["step"] for r in log_records(out) if "loss" in r][-1] == 20

# ------------------------------------------------------------------------------------------------
# DDP: every process resumes its own random stream


def test_ddp_resume_restores_each_process_rng(dataset, toks, tmp_path):
    """With dropout, the two processes draw different masks; a resumed 2-process run must go on drawing
    them as the uninterrupted one does (each process its own RNG, not rank 0's)."""
    common = dict(batch_size=2, total_batch_size=128, eval_interval=100, dropout=0.2, learning_rate=3e-3,
                  min_lr=3e-3, warmup_iters=0)  # a constant learning rate: max_iters does not change it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]

    def ddp(out, **over):
        r = subprocess.run(cmd + args(dataset, toks, out, **common, **over), cwd=ROOT, capture_output=True,
                           text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    ddp(tmp_path / "full", max_iters=4)
    ddp(tmp_path / "cut", max_iters=2)
    rng = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    ddp(tmp_path / "cut", max_iters=4, init_from="resume")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed DDP run differs from the uninterrupted one"
