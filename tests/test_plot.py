"""lab/plot.py: curves and a summary from train.py's log.jsonl, resumed runs included; matplotlib optional."""
import json
import sys

import pytest

from lab import plot


def write_log(folder, records):
    folder.mkdir()
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(folder)


def train_line(step, loss, dt, batch_tokens=1024):
    return dict(step=step, loss=loss, lr=1e-3, dt=dt, tok_s=batch_tokens / dt, lost=[0.0])


# stopped by Ctrl-C at step 23, resumed there (the stop is logged: dt covers steps 20..23)
STOPPED_AND_RESUMED = [dict(step=0, val_loss=10.8, val_bpb=4.9), train_line(10, 6.0, 0.5),
                       train_line(20, 5.5, 0.5), dict(step=20, val_loss=5.6, val_bpb=2.6),
                       train_line(23, 5.4, 1.0), dict(step=23, resumed=True, changed={}),
                       train_line(30, 5.2, 2.0), dict(step=30, val_loss=5.3, val_bpb=2.4)]


def test_wall_clock_sums_each_interval_across_a_resume(tmp_path):
    run = plot.load_run(write_log(tmp_path / "out-a", STOPPED_AND_RESUMED))
    assert run["name"] == "out-a"
    # 10 x 0.5 + 10 x 0.5 + 3 x 1.0 + 7 x 2.0 seconds; evaluations take no training time
    assert [s for _, s in run["train"].values()] == [5.0, 10.0, 13.0, 27.0]
    assert run["val"][30] == (5.3, 2.4, 27.0) and run["val"][20][2] == 10.0
    s = plot.summary(run)
    assert (s["steps"], s["tokens"], s["seconds"]) == (30, 30 * 1024, 27.0)
    assert (s["final_bpb"], s["best_bpb"], s["best_step"]) == (2.4, 2.4, 30)


def test_a_resume_between_log_lines_times_from_the_checkpoint(tmp_path):
    """A crash at step 27 after a checkpoint at step 25 (ckpt_interval): train.py cut the log back to 25."""
    log = STOPPED_AND_RESUMED[:4] + [dict(step=25, resumed=True, changed={}), train_line(30, 5.2, 2.0)]
    assert plot.load_run(write_log(tmp_path / "out-c", log))["train"][30] == (5.2, 20.0)  # 10 + 5 x 2.0


def test_a_run_resumed_from_an_earlier_checkpoint_keeps_the_latest_values(tmp_path):
    """A crash after step 30: resumed from the step-20 checkpoint, steps 21..30 run again (logs of
    train.py from before it cut the log back to the checkpoint's step on resume)."""
    crashed = STOPPED_AND_RESUMED[:-1] + [dict(step=20, val_loss=5.6, val_bpb=2.6), train_line(30, 5.1, 1.0),
                                          dict(step=30, val_loss=5.25, val_bpb=2.45)]
    run = plot.load_run(write_log(tmp_path / "out-b", crashed))
    assert run["train"][30] == (5.1, 37.0)  # the redone steps cost time too: 27 + 10 x 1.0
    assert run["val"][30] == (5.25, 2.45, 37.0) and list(run["val"]) == [0, 20, 30]
    # resumed from a checkpoint between evaluations (ckpt_interval): where it started is unknown, so the
    # first interval counts as one step rather than going back in time
    with open(tmp_path / "out-b" / "log.jsonl", "a") as f:
        f.write(json.dumps(train_line(25, 5.3, 3.0)) + "\n")
    assert plot.load_run(str(tmp_path / "out-b"))["train"][25] == (5.3, 40.0)


def test_png_of_two_runs_on_one_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_log(tmp_path / "out-a", STOPPED_AND_RESUMED)
    b = write_log(tmp_path / "out-b", [dict(step=0, val_loss=10.8, val_bpb=4.9), train_line(10, 5.0, 0.2),
                                       dict(step=10, val_loss=5.1, val_bpb=2.3)])
    png = tmp_path / "curves.png"
    plot.main([a, b, "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    out = capsys.readouterr().out
    assert "out-a" in out and "out-b" in out and f"wrote {png}" in out
    plot.main([a])  # default: next to the run's log
    assert (tmp_path / "out-a" / "curves.png").exists()
    plot.main([a, "--out", str(tmp_path / "new" / "a.png")])  # a folder that does not exist yet
    assert (tmp_path / "new" / "a.png").exists()


def test_table_needs_no_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it now fails
    a = write_log(tmp_path / "out-a", STOPPED_AND_RESUMED)
    plot.main([a, "--table"])
    header, row = capsys.readouterr().out.splitlines()
    assert "best val bpb" in header
    assert row.split() == ["out-a", "30", "30,720", "27", "s", "5.3000", "2.4000", "2.4000", "(30)"]
    plot.main([a])  # the quickstart's command: the table, and a note instead of the figure
    _, again, note = capsys.readouterr().out.splitlines()
    assert again == row and "matplotlib is not installed" in note
    assert not (tmp_path / "out-a" / "curves.png").exists()
    with pytest.raises(SystemExit, match="pip install matplotlib"):  # a figure asked for by name
        plot.main([a, "--out", str(tmp_path / "a.png")])


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        plot.main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="should end in .png"):
        plot.main([str(tmp_path / "nowhere"), "--out", "curves.pdf"])
    bad = write_log(tmp_path / "bad", [dict(step=0, val_loss=10.8, val_bpb=4.9), dict(step=10, loss=5.0)])
    with pytest.raises(SystemExit, match="line 2 is not a train.py log line.*dt"):
        plot.main([bad, "--table"])
    with pytest.raises(SystemExit, match="line 1 is not a train.py log line.*step"):
        plot.main([write_log(tmp_path / "other", [dict(text="a document")]), "--table"])
    with pytest.raises(SystemExit, match="no train.py log lines"):
        plot.main([write_log(tmp_path / "new", []), "--table"])  # a run that has just started


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path, capsys):
    a = write_log(tmp_path / "out-a", STOPPED_AND_RESUMED)
    with open(tmp_path / "out-a" / "log.jsonl", "a") as f:
        f.write('{"step": 40, "loss": 5.1, "lr": 0.001, "d')
    plot.main([a, "--table"])
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "30"
