"""evaluate.py diagnostics: branch usage (ablation and norms by hooks), task word groups and the token-clean
training split, a second text domain, train.py's val bpb reproduced, progress, where results are written."""
import copy
import json
import math
import os

import pytest
import torch

import evaluate
from conftest import PLAIN
from lab import probes, tasks
from lab.scorer import progress
from model import GPT, GPTConfig
from test_evaluate import TEXT, WORDS, save_checkpoint, tiny_model


def two_stream_model(toks, parallel=False):
    """Bytes read by layer 0, a BPE side stream read by layers 0 and 1 (with parallel=True beside their
    self-attention); cross-attention given weight."""
    torch.manual_seed(0)
    streams = [dict(tokenizer="bytes", vocab_size=256, n_layer=1, n_head=2, n_embd=32, window=16, budget=256,
                    cross_layers=[0]),
               dict(tokenizer=toks["bpe400"].spec, vocab_size=toks["bpe400"].vocab_size, n_layer=1, n_head=2,
                    n_embd=32, window=16, budget=64, cross_layers=[0, 1], parallel=parallel)]
    model = GPT(GPTConfig(tokenizer=toks["bpe300"].spec, vocab_size=toks["bpe300"].vocab_size, block_size=24,
                          n_layer=2, n_head=2, n_embd=32, streams=streams)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".cross." in name:
                p.normal_(0, 0.2)
    return model


def without_stream(model, s):
    """A copy whose cross-attention from stream s adds nothing: its output projections are zero."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks:
            for t, cross in zip(block.reads, block.cross):
                if t == s:
                    cross.proj.weight.zero_()
    return m


def logits(model, scorer, text):
    inputs, _ = scorer.inputs([(scorer.corpus(ids), 0, len(ids)) for ids in [scorer.main_tok.encode(text)]])
    inputs["targets"] = None
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.mark.parametrize("parallel", [False, True])
def test_branch_hooks_zero_exactly_one_stream_and_measure_its_norm(toks, parallel):
    model = two_stream_model(toks, parallel)
    side_toks = [toks["bytes"], toks["bpe400"]]
    scorer = evaluate.Scorer(model, toks["bpe300"], side_toks, "cpu", batch_tokens=200)
    before = logits(model, scorer, PLAIN[:30])
    hooks = probes.BranchHooks(model)
    for s in (0, 1):
        hooks.zeroed = {s}
        ref = without_stream(model, s)
        zeroed = logits(model, scorer, PLAIN[:30])
        assert torch.allclose(zeroed, logits(ref, scorer, PLAIN[:30]), atol=1e-5), "the same as no stream s"
        assert not torch.allclose(zeroed, before, atol=1e-3), "the stream mattered"
    # norms: recorded only while recording, summed over the tokens a mask selects
    hooks.zeroed, hooks.recording = set(), True
    logits(model, scorer, PLAIN[:30])
    n = hooks.last[0].shape[1]
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, 3:] = True
    expect = {(l, s): float(hooks.last[l, s][mask].sum() / hooks.last[l][mask].sum()) for l, s in
              ((0, 0), (0, 1), (1, 1))}
    hooks.count(mask)
    shares = {s: hooks.norm_share(s) for s in (0, 1)}
    assert set(shares[0]) == {"0"} and set(shares[1]) == {"0", "1"}, "one per layer that reads the stream"
    assert all(math.isclose(shares[s][str(l)], v, rel_tol=1e-6) and v > 0 for (l, s), v in expect.items())
    hooks.remove()
    assert torch.equal(logits(model, scorer, PLAIN[:30]), before), "removed hooks change nothing"
    # cross-attention that adds nothing (as at initialisation) has a share of 0
    silent = without_stream(model, 0)
    hooks = probes.BranchHooks(silent)
    hooks.recording = True
    logits(silent, scorer, PLAIN[:30])
    hooks.count(mask)
    assert hooks.norm_share(0) == {"0": 0.0} and hooks.norm_share(1)["1"] > 0
    # a packed batch: cross-attention ran its 2 x 3 tokens as one row of 6
    hooks = probes.BranchHooks(silent)
    hooks.last = {0: torch.ones(2, 3), (0, 0): torch.arange(6.0)[None]}
    hooks.count(torch.tensor([[True, True, True], [False, False, True]]))
    assert hooks.sums[0, 0] == [0 + 1 + 2 + 5, 4]


def test_branch_usage_against_models_without_the_stream(toks):
    model = two_stream_model(toks)
    side_toks = [toks["bytes"], toks["bpe400"]]
    scorer = lambda m: evaluate.Scorer(m, toks["bpe300"], side_toks, "cpu", batch_tokens=200)
    data = b"\xff" + TEXT.encode() + b"\xff" + PLAIN.encode()
    data2 = b"\xff" + PLAIN[::-1].encode()
    items = {f: tasks.eval_items(WORDS, f, 3, seed=0) for f in ("spell", "first_letter")}
    out = evaluate.branch_usage(scorer(model), data, data2, items)
    assert out["text_bpb"] == evaluate.text_bpb(scorer(model), data)["bpb"]
    assert set(out["streams"]) == {"bytes", toks["bpe400"].spec}
    for s, name in enumerate(["bytes", toks["bpe400"].spec]):
        r, ref = out["streams"][name], scorer(without_stream(model, s))
        assert r["layers"] == ([0] if s == 0 else [0, 1])
        assert set(r["norm_share"]) == {str(l) for l in r["layers"]}
        assert math.isclose(r["zeroed"]["text_bpb"], evaluate.text_bpb(ref, data)["bpb"], rel_tol=1e-5)
        assert math.isclose(r["zeroed"]["text2_bpb"], evaluate.text_bpb(ref, data2)["bpb"], rel_tol=1e-5)
        assert r["zeroed"]["task_acc"] == probes.choice_accuracy(ref, items, "")[0]
        assert r["delta"]["text_bpb"] == r["zeroed"]["text_bpb"] - out["text_bpb"] != 0
    # the hooks are gone afterwards, and a baseline has nothing to measure
    assert not any(b._forward_pre_hooks or any(c._forward_hooks for c in b.cross) for b in model.blocks)
    assert evaluate.branch_usage(scorer(tiny_model(toks, streams=())), data, data2, items) == {"streams": {}}


# ------------------------------------------------------------------------------------------------
# task words: train words, held-out words of one token and of several; no held-out token in training


def test_word_groups_split_held_out_words_by_the_main_tokenizer(toks):
    tok = toks["bpe300"]
    train, held = tasks.split_words(WORDS)
    groups = tasks.word_groups(WORDS, tok.encode)
    assert groups["train"] == train
    assert sorted(groups["heldout_single_token"] + groups["heldout_multi_token"]) == held
    assert groups["heldout_single_token"] and groups["heldout_multi_token"]
    assert all(len(tok.encode(" " + w)) == 1 for w in groups["heldout_single_token"])
    assert all(len(tok.encode(" " + w)) > 1 for w in groups["heldout_multi_token"])
    for group, words in groups.items():
        items = tasks.eval_items(WORDS, "spell", 50, 0, group, groups)
        assert items and {it["word"] for it in items} <= set(words)
        assert items == tasks.eval_items(WORDS, "spell", 50, 0, group, groups), "seeded"


def test_training_tasks_show_no_token_of_a_held_out_word(toks):
    tok = toks["bpe300"]  # " the" and " sells" are held-out words and tokens of it
    heldout_tokens = tasks.heldout_token_ids(tok.token_bytes)
    assert {tok.token_bytes[i] for i in heldout_tokens} >= {b" the", b" sells"}
    # train words whose answers (" theory", " sellsword": spelled by join, edits) hold those tokens
    words = WORDS + ["theme", "theory", "thereby", "them", "then", "these", "they", "sellsword"]
    leaky = tasks.TaskDocuments(words, seed=1).document
    assert any(heldout_tokens & set(tok.encode(leaky())) for _ in range(300)), "the leak the rule closes"
    docs = tasks.TaskDocuments(words, seed=1, tok=tok)
    text = "".join(docs.document() for _ in range(300))
    assert not heldout_tokens & set(tok.encode(text))
    assert '"theory"' in text, "the train words themselves still appear (their tokens differ after a quote)"


# ------------------------------------------------------------------------------------------------
# the script: a second domain, word groups, branch usage, results beside the checkpoint


def test_script_second_domain_groups_branch_and_json_beside_the_checkpoint(toks, tmp_path, monkeypatch):
    spec = toks["bpe300"].spec
    base = save_checkpoint(tiny_model(toks, streams=()), [spec], tmp_path / "out-base")
    byte = save_checkpoint(tiny_model(toks), [spec, "bytes"], tmp_path / "out-bytes")
    (tmp_path / "text.txt").write_text(TEXT * 2)
    (tmp_path / "other.txt").write_text(PLAIN * 2)
    (tmp_path / "words.txt").write_text("\n".join(WORDS))
    os.makedirs(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")  # the working directory gets nothing
    common = ["--words", str(tmp_path / "words.txt"), "--pairs", "3", "--ctx_chars", "60",
              "--cont_chars", "20", "--task_items", "2", "--families", "spell,first_letter",
              "--noise", "swap:0.2", "--seg_rates", "1", "--batch_tokens", "300", "--device", "cpu"]
    text, other = str(tmp_path / "text.txt"), str(tmp_path / "other.txt")
    res = evaluate.main([base, byte, "--text", text, "--text2", other] + common)
    assert os.listdir(tmp_path / "cwd") == []
    for name in (base, byte):
        saved = json.load(open(os.path.join(name, "eval.json")))
        assert saved["checkpoints"] == {name: json.loads(json.dumps(res["checkpoints"][name]))}
        r = res["checkpoints"][name]
        for key in ("text2", "noise2", "segmentation2", "task_groups", "branch"):
            assert key in r, key
        assert r["text2"]["bytes"] == len((PLAIN * 2).encode())
        assert set(r["task_groups"]) == set(evaluate.TASK_GROUPS)
        assert all(r["task_groups"][g]["mean"]["n"] == 4 for g in evaluate.TASK_GROUPS)
    assert res["checkpoints"][base]["branch"] == {"streams": {}}
    bytes_branch = res["checkpoints"][byte]["branch"]["streams"]["bytes"]
    assert bytes_branch["layers"] == [0]
    assert set(bytes_branch["delta"]) == {"text_bpb", "text2_bpb", "task_acc", "task_acc_norm"}
    s = res["settings"]
    assert s["text2_bytes"] == len((PLAIN * 2).encode()) and s["n_pairs2"] == 3
    assert set(s["tasks"]["groups"][spec]) == set(evaluate.TASK_GROUPS)
    # the second domain is scored as the first would be
    alone = evaluate.main([byte, "--text", other, "--skip", "noise", "segmentation", "tasks", "task_groups",
                           "branch", "--json", str(tmp_path / "alone.json")] + common)
    assert alone["checkpoints"][byte]["text"] == res["checkpoints"][byte]["text2"]
    table = evaluate.markdown_table(res["checkpoints"])
    for label in ("text2 bpb", "text2 noise: swap 0.2", "tasks on held-out single-token words",
                  "branch bytes zeroed: Δ text bpb", "branch bytes zeroed: Δ text2 bpb",
                  "branch bytes: cross"):
        assert label in table, label


def test_text_windows_reproduce_train_py_val_bpb(trained, dataset, toks):
    """train.py's val bpb is evaluate.py's text bpb over the windows train.py picks: eval_iters x batch_size
    (here 2 x 4) full windows spread evenly over the val split."""
    with open(os.path.join(trained, "log.jsonl")) as f:
        last = [r for r in map(json.loads, f) if "val_bpb" in r][-1]
    res = evaluate.main([trained, "--text", dataset, "--max_bytes", "0", "--text_windows", "8",
                         "--skip", "noise", "segmentation", "tasks", "task_groups", "branch",
                         "--device", "cpu",
                         "--json", os.path.join(os.path.dirname(trained), "eval_windows.json")])
    assert math.isclose(res["checkpoints"][trained]["text"]["bpb"], last["val_bpb"], rel_tol=1e-5)
    assert res["checkpoints"][trained]["text"]["windows"] == 8


def test_progress_shows_time_left(capsys):
    assert [evaluate.duration(s) for s in (42, 200, 3 * 3600, float("nan"))] == ["42s", "3.3min", "3.0h", "?"]
    progress("ckpt", "text bpb windows", 5, 20, t0=evaluate.time.time() - 10, unit="batch ")
    line = capsys.readouterr().err
    assert "batch 5/20 (25%)" in line and "eta 30s" in line
