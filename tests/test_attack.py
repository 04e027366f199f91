"""lab/attack.py: the greedy search finds a planted decisive edit, is seeded, never edits a continuation,
draws the same candidates for any model; evaluate.py's attack group end to end, with transfer."""
import json
import os
import re
import zlib

import numpy as np
import pytest

import evaluate
from conftest import HARD_DOCS, PLAIN
from lab import attack
from lab.inputs import make_pairs
from test_evaluate import TEXT, script_inputs


def osa_distance(a, b):
    """Edit distance with substitutions, insertions, deletions and swaps of neighbours."""
    d = [[i + j if not i * j else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


class FakeScorer:
    """The Scorer's interface for bpb_objective: every scored sequence recorded, each continuation token's
    loss a function of the whole sequence (salt: another 'model'; loss(ids): a planted one)."""

    def __init__(self, tok, salt=0, loss=None):
        self.main_tok, self.name, self.seqs = tok, "fake", []
        self.loss = loss or (lambda ids: zlib.crc32(repr((salt, ids)).encode()) / 2**32)

    def continuation_losses(self, seqs, what=""):
        self.seqs += seqs
        return [np.full(m, self.loss(ids)) for ids, m in seqs]


def items_of(texts):
    return [(f"t{i}", x, attack.unlocked(x)) for i, x in enumerate(texts)]


def test_the_search_finds_a_planted_decisive_edit(toks):
    tok = toks["bpe300"]
    pairs = [("the lazy dog sat on the mat", " and slept")]
    pos = pairs[0][0].index("lazy")

    def loss(ids):  # the continuation's loss depends on one character: high once "lazy" reads "Lazy"
        return 5.0 if b"Lazy" in tok.decode(ids) else zlib.crc32(repr(ids).encode()) / 2**34

    objective = attack.bpb_objective(FakeScorer(tok, loss=loss), pairs)
    n_edits = len(attack.candidates(pairs[0][0], attack.unlocked(pairs[0][0]), "all", 10_000))
    (rec,) = attack.search(items_of([pairs[0][0]]), objective, ks=[1], queries=n_edits, seed=0)
    assert rec["edits"] == [["case", pos, "L"]] and rec["queries"] == n_edits
    assert rec["values"][0] > 1 > rec["clean"] and rec["random_values"][0] < 1
    # more edits keep the decisive one: k=2 starts from the best single edit
    (rec2,) = attack.search(items_of([pairs[0][0]]), objective, ks=[1, 2], queries=2 * n_edits, seed=0)
    assert rec2["edits"][0] == ["case", pos, "L"] and len(rec2["edits"]) == 2
    assert rec2["values"][1] >= rec2["values"][0] == rec["values"][0]


def test_seeded_and_model_free_candidates(toks):
    pairs = make_pairs([TEXT * 2, PLAIN], 6, 120, 30, seed=3)
    runs = {}
    for salt, seed in ((0, 0), (0, 0), (1, 0), (0, 1)):
        scorer = FakeScorer(toks["bpe300"], salt)
        recs = attack.search(items_of([x for x, _ in pairs]), attack.bpb_objective(scorer, pairs), [1, 2, 4],
                             queries=40, seed=seed)
        # the first round's candidates: the sequences scored after the clean ones
        runs.setdefault((salt, seed), []).append((recs, scorer.seqs[len(pairs):len(pairs) + 10 * len(pairs)]))
    (a, cand_a), (b, cand_b) = runs[0, 0]
    assert a == b and cand_a == cand_b, "same seed, same model: the same edits"
    other_model, other_cand = runs[1, 0][0]
    assert other_cand == cand_a, "another model gets the same candidates"
    assert [r["random_edits"] for r in other_model] == [r["random_edits"] for r in a], "and the same control"
    assert [r["edits"] for r in other_model] != [r["edits"] for r in a], "but keeps other ones"
    other_seed, other_seed_cand = runs[0, 1][0]
    assert other_seed_cand != cand_a and [r["edits"] for r in other_seed] != [r["edits"] for r in a]
    text = pairs[0][0]
    assert (attack.candidates(text, attack.unlocked(text), "x", 20)
            == attack.candidates(text, attack.unlocked(text), "x", 20)
            != attack.candidates(text, attack.unlocked(text), "y", 20))


def test_edits_stay_in_the_context_and_count_k(toks):
    tok = toks["bpe300"]
    pairs = make_pairs([TEXT * 3, PLAIN] + HARD_DOCS * 3, 20, 60, 20, seed=1)
    assert len(pairs) == 20
    scorer, queried = FakeScorer(tok), []
    objective = attack.bpb_objective(scorer, pairs)
    ks = [1, 2, 4, 8]
    recs = attack.search(items_of([x for x, _ in pairs]), lambda b: queried.extend(b) or objective(b), ks,
                         queries=24, seed=0)
    # every query: an edit of a pair's context (8 edits at most), then that pair's continuation, whole
    assert len(queried) == len(scorer.seqs) == 20 * (1 + 24 + len(ks))
    for (i, x), (ids, m) in zip(queried, scorer.seqs):
        assert ids == [tok.eot] + tok.encode(x) + tok.encode(pairs[i][1]) and m == len(tok.encode(pairs[i][1]))
        assert osa_distance(pairs[i][0], x) <= 8
    for (ctx, cont), r in zip(pairs, recs):
        for k in ks:
            for edits in (r["edits"], r["random_edits"]):
                assert len(edits) == 8
                x = attack.replay(ctx, attack.unlocked(ctx), edits[:k])
                assert 1 <= osa_distance(ctx, x) <= k
                # only ASCII letters are written, deleted or moved: the rest of the text stays as it was
                assert re.sub("[A-Za-z]", "", x) == re.sub("[A-Za-z]", "", ctx)
    # a character task's quoted strings, which define its answer, are never edited
    ctx = 'Count "e" in "there":'
    lock = attack.quotes_locked(ctx)
    (r,) = attack.search([("q", ctx, lock)], lambda b: [0.0 for _ in b], [1, 2, 8], queries=80, seed=0)
    x = attack.replay(ctx, lock, r["edits"])
    assert re.findall(r'"[^"]*"', x) == ['"e"', '"there"'] and x != ctx


class FakeChoiceScorer:
    """choice_scores of a 'model' that answers right (" a" over " b") while the question reads "Spell"
    (robust: always)."""
    name = "fake"

    def __init__(self, robust=False):
        self.robust = robust

    def choice_scores(self, items, what=""):
        right = lambda ctx: self.robust or "Spell" in ctx
        return [[(-1.0 if right(ctx) else -3.0, 0.0), (-2.0, 0.0)] for ctx, _ in items]


def test_answers_turned_wrong_and_transfer():
    items = {"spell": [dict(context=f'Spell "{w}":', choices=[" a", " b"], label=0) for w in ("cat", "dog")]}
    run = lambda scorer: attack.attack_probe(scorer, [], items, None, [1, 2], queries=8, seed=0, n_items=5)
    fragile, robust = run(FakeChoiceScorer()), run(FakeChoiceScorer(robust=True))
    r = fragile["tasks"]["spell"]
    assert r["n"] == r["right"] == 2 and r["k"]["1"]["turned_wrong"] == r["k"]["2"]["turned_wrong"] == 1.0
    # an answer once wrong is left as it is: one edit, one round of queries
    assert r["edits"] == {"1": 1.0, "2": 1.0} and r["queries_per_item"] == 4
    assert robust["tasks"]["spell"]["k"]["2"]["turned_wrong"] == 0.0
    assert fragile["tasks"]["mean"]["k"]["2"] == {"turned_wrong": 1.0, "random_turned_wrong": 1.0}
    # the robust model under the fragile one's edits, and back
    attack.transfer(FakeChoiceScorer(robust=True), [], items, None, 5, robust, fragile, "fragile")
    attack.transfer(FakeChoiceScorer(), [], items, None, 5, fragile, robust, "robust")
    assert robust["tasks"]["spell"]["transfer"]["fragile"]["k"]["1"]["turned_wrong"] == 0.0
    assert fragile["tasks"]["mean"]["transfer"]["robust"]["k"]["2"]["turned_wrong"] == 1.0


def test_script_attack_group_with_transfer(toks, tmp_path):
    base, byte, probe = script_inputs(
        toks, tmp_path, '{"context": "The quick brown", "choices": [" fox", " cat"], "answer": 0}\n'
                        '{"context": "sea", "choices": [" shells", " shore", " x"], "answer": 2}\n')
    common = [base, byte, "--text", str(tmp_path / "text.txt"), "--text2", str(tmp_path / "text.txt"),
              "--words", str(tmp_path / "words.txt"), "--families", "first_letter,spell", "--probes", str(probe),
              "--ctx_chars", "40", "--cont_chars", "15", "--batch_tokens", "600", "--device", "cpu",
              "--skip", "text", "noise", "segmentation", "tasks", "task_groups", "branch", "probes"]
    res = evaluate.main(common + ["--attack_k", "2,1", "--attack_pairs", "3", "--attack_items", "3",
                                  "--attack_queries", "8"])
    for name in (base, byte):  # each checkpoint's eval.json, written again with the transfer
        saved = json.load(open(os.path.join(name, "eval.json")))["checkpoints"][name]
        assert saved == json.loads(json.dumps(res["checkpoints"][name]))
    assert res["settings"]["attack_k"] == [1, 2] and res["settings"]["n_attack_pairs"] == 3
    for name, other in ((base, byte), (byte, base)):
        a = res["checkpoints"][name]["attack"]
        c = a["continuation"]
        assert c["n"] == 3 and c["candidates_per_round"] == 4 and c["queries_per_item"] == 8
        assert set(c["k"]) == {"1", "2"} and c["edits"] == {"1": 1.0, "2": 2.0}
        assert c["k"]["2"]["delta"] >= c["k"]["1"]["delta"] > 0, "greedy: each edit raises the loss most"
        assert 0 <= c["k"]["1"]["share_over"] <= 1 and "random_delta" in c["k"]["1"]
        assert set(c["transfer"]) == {other} and set(c["transfer"][other]["k"]) == {"1", "2"}
        assert set(a["tasks"]) == {"first_letter", "spell", "mean"} and a["tasks"]["first_letter"]["n"] == 3
        assert set(a["probes"]) == {"probe"} and a["probes"]["probe"]["n"] == 2
        for t in (a["tasks"]["first_letter"], a["tasks"]["spell"], a["probes"]["probe"]):
            for v in t["k"].values():
                assert v["turned_wrong"] is None or 0 <= v["turned_wrong"] <= 1
        assert "continuation" in res["checkpoints"][name]["attack2"]
        assert "noise" not in res["checkpoints"][name]
    table = evaluate.markdown_table(res["checkpoints"])
    assert "attack text continuation k=1: Δ bpb" in table and "attack text2 continuation k=2" in table
    assert f"under the edits found against {byte}" in table and "attack tasks k=2: right answers" in table
    # the group is off unless --attack_k asks for it
    off = evaluate.main(common + ["--json", str(tmp_path / "c.json")])
    assert "attack" not in off["checkpoints"][base] and "attack" not in off["settings"]["skip"]
    with pytest.raises(SystemExit, match="at least the largest --attack_k"):
        evaluate.main(common + ["--attack_k", "1,8", "--attack_queries", "4"])
