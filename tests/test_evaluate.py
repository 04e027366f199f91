"""evaluate.py and tasks.py: noise, non-canonical segmentation, the word split, likelihood scoring, the script."""
import json
import math
import os
import random
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

import evaluate
import perturb
import prepare
import sample
from conftest import HARD_DOCS, PLAIN, write_jsonl
from data import Corpus, batch_inputs, collate, read_array
from lab import probes, tasks
from tokenizers import EOT_BYTE, Tokenizer
from model import GPT, GPTConfig

TEXT = ("Once upon a time, the quick brown fox jumped over the lazy dog near the Riverside Garden. "
        "She sells sea shells by the sea shore; the shells she sells are surely sea shells! "
        "A straw hat and a strawberry tart sat on the table in the little house by the river.\n") * 3
# a word list: real words, and letter strings made up from a seed (lists of any kind must work)
_rng = random.Random(0)
WORDS = sorted(set(PLAIN.lower().replace(".", " ").replace(";", " ").split()) | set(
    "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(3, 10))) for _ in range(400)))

# ------------------------------------------------------------------------------------------------
# noise


def changed_units(a, b):
    return sum(x != y for x, y in zip(a, b))


@pytest.mark.parametrize("kind", list(perturb.NOISE_DEFAULTS))
def test_noise_is_seeded_and_meets_its_rate(kind):
    text = TEXT
    rate = 0.3
    out = perturb.noise(text, kind, rate, seed=7)
    assert out == perturb.noise(text, kind, rate, seed=7), "same seed, same text"
    assert len({perturb.noise(text, kind, rate, seed=s) for s in range(5)}) > 1, "seeds must matter"
    assert perturb.noise(text, kind, 0.0, seed=7) == text, "rate 0 changes nothing"
    letters = sum(c.isalpha() for c in text)
    k = lambda n: int(rate * n + 0.5)
    if kind == "drop":
        assert len(out) == len(text) - k(len(text))
    elif kind == "delete":
        assert len(out) == len(text) - k(letters)
        assert re.sub(r"[A-Za-z]", "", out) == re.sub(r"[A-Za-z]", "", text), "only letters go"
    elif kind == "insert":
        assert len(out) == len(text) + k(letters)
    elif kind == "substitute":
        assert len(out) == len(text) and changed_units(text, out) == k(letters)
        assert all(a.isupper() == b.isupper() for a, b in zip(text, out) if a != b), "case is kept"
    elif kind == "swap":
        assert sorted(out) == sorted(text) and changed_units(text, out) == 2 * k(letters)
    elif kind == "randomcase":
        cased = sum(c.swapcase() != c for c in text)
        assert out.lower() == text.lower() and changed_units(text, out) == k(cased)
    elif kind == "repeat":
        # every picked character appears 2 to 4 times where it stood once
        extra = len(out) - len(text)
        n = k(sum(not c.isspace() for c in text))
        assert n <= extra <= 3 * n and re.sub(r"(.)\1+", r"\1", out) == re.sub(r"(.)\1+", r"\1", text)
    elif kind == "uppercase":
        words, noisy = text.split(), out.split()
        eligible = sum(w.upper() != w for w in words)
        assert len(noisy) == len(words) and changed_units(words, noisy) == k(eligible)
        assert out.lower() == text.lower()
    elif kind == "antspeak":
        # a converted word becomes single letters; which one-letter words were converted cannot be seen
        words = text.split()
        multi, single = sum(len(w) > 1 for w in words), sum(len(w) == 1 for w in words)
        whole = sum(len(w) > 1 for w in out.split())
        assert multi - k(len(words)) <= whole <= multi - k(len(words)) + single
        assert re.sub(r"\s", "", out).upper() == re.sub(r"\s", "", text).upper(), "only case and spacing change"
        assert perturb.noise("the cat  sat", kind, 1.0, seed=1) == " ".join("THE CAT  SAT")
    with pytest.raises(ValueError):
        perturb.noise(text, kind, 1.5, seed=0)


def test_blt_whole_text_forms():
    s = "Hello, wörld!\tthe  end"
    assert perturb.noise(s, "uppercase", 1.0, 0) == s.upper()
    assert perturb.noise(s, "antspeak", 1.0, 0) == " ".join(s.upper())
    half = perturb.noise("one two three four five six", "antspeak", 0.5, 3)
    assert sum(w.islower() for w in half.split()) == 3, half
    assert perturb.parse_noise("drop:0.2,swap") == {"drop": 0.2, "swap": perturb.NOISE_DEFAULTS["swap"]}
    with pytest.raises(SystemExit, match="unknown kind"):
        perturb.parse_noise("typo:0.1")

# ------------------------------------------------------------------------------------------------
# non-canonical segmentation


def tokenizers(toks):
    out = [toks["bpe300"], toks["bpe400"]]
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        out.append(Tokenizer("gpt2"))
    return out


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_noncanonical_segmentation_spells_the_same_bytes(toks, rate):
    for tok in tokenizers(toks):
        for text in [PLAIN, TEXT] + HARD_DOCS:
            ids = tok.encode(text)
            multi = sum(len(tok.token_bytes[i]) > 1 for i in ids)
            new, n = perturb.noncanonical(tok, ids, rate, seed=3)
            assert tok.decode(new) == tok.decode(ids) == text.encode("utf-8"), "same bytes"
            assert new == perturb.noncanonical(tok, ids, rate, seed=3)[0], "seeded"
            assert n == int(rate * multi + 0.5), "the rate is the share of multi-byte tokens split"
            assert all(0 <= i < tok.vocab_size and i != tok.eot and tok.token_bytes[i] for i in new)
            if rate == 0:
                assert new == ids
            elif multi:
                assert new != ids and len(new) >= len(ids) + n
                # it is still a valid input: a corpus accepts it as the spelling of the bytes
                data = bytes([EOT_BYTE]) + text.encode()
                Corpus.from_bytes(data, tok, [], main_ids=[tok.eot] + new)
    assert perturb.noncanonical(Tokenizer("bytes"), list(b"abc"), 1.0, 0) == ([97, 98, 99], 0)

# ------------------------------------------------------------------------------------------------
# tasks: the word split, training documents, answers


def test_heldout_rule_is_the_same_for_any_list():
    train, held = tasks.split_words(WORDS)
    assert held and train and not set(train) & set(held)
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.3  # about HELDOUT_PERCENT
    other = WORDS[::3] + ["zebra", "quartz"]
    train2, held2 = tasks.split_words(other)
    assert set(held2) == {w for w in set(other) if w in held or (w not in WORDS and tasks.is_heldout(w))}
    assert set(train2) == {w for w in other if tasks.word_ok(w)} - set(held2)
    assert not any(tasks.word_ok(w) for w in ("The", "ab", "café", "spell", "every", "a" * 13))


def test_no_heldout_word_in_any_training_task():
    _, held = tasks.split_words(WORDS)
    docs = tasks.TaskDocuments(WORDS, seed=1)
    text = "".join(docs.document() for _ in range(400))
    lines = text.splitlines()
    assert len(lines) > 1000
    # every family is drawn
    for family, line in (("spell", "Spell "), ("spell_inverse", "Join "), ("first_letter", "First letter"),
                         ("last_letter", "Last letter"), ("count_letter", "Count "), ("contains_letter", "Does "),
                         ("insert_letter", "Add "), ("delete_letter", "Delete "),
                         ("substitute_letter", "Replace "), ("swap_letters", "Swap ")):
        assert any(l.startswith(line) for l in lines), family
    strings = set(tasks.line_words(text))
    assert not strings & set(held), "a held-out word is in a training task"
    assert not any(tasks.word_ok(s) and tasks.is_heldout(s) for s in strings), "nor any string the rule holds out"
    # the spelled-out forms too: no held-out word spelled letter by letter
    spelled = {m.replace(" ", "") for m in re.findall(r"(?<![A-Za-z])[a-z](?: [a-z])+(?![A-Za-z])", text)}
    assert not spelled & set(held)
    # and evaluation uses held-out words only
    for family in tasks.FAMILIES:
        items = tasks.eval_items(WORDS, family, 20, seed=0)
        assert items and all(it["word"] in held for it in items)
        assert items == tasks.eval_items(WORDS, family, 20, seed=0)


def test_task_answers_and_choices(toks):
    rng = random.Random(0)
    expect = {"spell": " t h e r e", "spell_inverse": " there", "first_letter": " t", "last_letter": " e"}
    for family, answer in expect.items():
        assert tasks.instance(family, "there", rng, ["these", "three", "other"])["answer"] == answer
    for family in tasks.FAMILIES:
        for w in ("there", "strawberry", "banana", "queue"):
            it = tasks.instance(family, w, rng, WORDS)
            ctx, ans = it["context"], it["answer"]
            assert it["choices"][it["label"]] == ans and len(set(it["choices"])) == len(it["choices"]) >= 2
            q = re.findall(r'"([^"]*)"', ctx)
            if family == "count_letter":
                assert ans == f" {w.count(q[0])}"
            elif family == "contains_letter":
                assert ans == (" yes" if q[1] in w else " no")
            elif family == "insert_letter":
                assert ans == " " + w.replace(q[1], q[1] + q[0])
            elif family == "delete_letter":
                assert ans == " " + w.replace(q[0], "")
            elif family == "substitute_letter":
                assert ans == " " + w.replace(q[0], q[1])
            elif family == "swap_letters":
                assert ans == " " + "".join(q[1] if c == q[0] else q[0] if c == q[1] else c for c in q[2])
            for tok in tokenizers(toks):  # context and answer tokenized apart = the training line tokenized whole
                assert tok.encode(ctx) + tok.encode(ans) == tok.encode(ctx + ans)


def test_prepare_mixes_task_documents_into_train_only(toks, tmp_path):
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) + "." for _ in range(60)]
    write_jsonl(tmp_path / "train.jsonl", docs[:50])
    write_jsonl(tmp_path / "val.jsonl", docs[50:])
    out = tmp_path / "prep"
    prepare.main(["--train", str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"), "--out", str(out),
                  "--tokenizer", toks["bpe300"].spec, "--workers", "1", "--tasks_fraction", "0.2"])
    meta = json.load(open(out / "meta.json"))
    t = meta["tasks"]
    assert t["docs"] > 0 and abs(t["fraction_actual"] - 0.2) < 0.03, t
    # the token count in meta is the real one: task documents' tokens, end-of-text included
    train = Corpus.load(str(out), "train", toks["bpe300"], [])
    data = bytes(train.data)
    task_docs = [d for d in data.split(b"\xff") if d.startswith((b"Spell", b"Join", b"First", b"Last", b"Count",
                                                                  b"Does", b"Add", b"Delete", b"Replace", b"Swap"))]
    assert len(task_docs) == t["docs"]
    assert sum(len(toks["bpe300"].encode(d.decode())) + 1 for d in task_docs) == t["tokens"]
    assert meta["splits"]["train"]["tokens"] == train.n_tokens
    val = bytes(read_array(str(out / "val.bytes.bin"))[0])
    assert b"Spell" not in val and b"Join" not in val
    held = set(tasks.split_words(tasks.load_words(str(out / "task_words.txt")))[1])
    assert held and not set(tasks.line_words(b"".join(task_docs).decode())) & held
    # nor a token of the main tokenizer whose text is a held-out word (" the" and " sells" of bpe300)
    heldout_tokens = tasks.heldout_token_ids(toks["bpe300"].token_bytes)
    assert t["heldout_tokens"] == len(heldout_tokens) > 0
    assert not heldout_tokens & set(toks["bpe300"].encode(b"".join(task_docs).decode()))

# ------------------------------------------------------------------------------------------------
# scoring against a direct computation


BYTES = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=32, window=16, budget=256, cross_layers=[0])


def tiny_model(toks, streams=(BYTES,), T=24, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(tokenizer=toks["bpe300"].spec, vocab_size=toks["bpe300"].vocab_size, block_size=T, n_layer=2,
                    n_head=2, n_embd=32, streams=[dict(s, vocab_size=256) for s in streams])
    m = GPT(cfg).eval()
    with torch.no_grad():  # cross-attention starts as a no-op: give it weight, so the bytes matter
        for name, p in m.named_parameters():
            if ".cross." in name:
                p.normal_(0, 0.2)
    return m


def direct_loglik(model, tok, side_toks, ids, start):
    """Sum of log p(ids[k] | ids[p:k]) for k >= start, one unbatched forward pass per token, log-softmax over
    the model's whole (padded) output, as its loss is. A sequence longer than block_size + 1 is cropped from
    the left to its last block_size + 1 tokens (p), the definition evaluate.py implements in one pass."""
    T, total = model.config.block_size, 0.0
    budgets = [(t, s.budget) for t, s in zip(side_toks, model.config.streams)]
    p = max(0, len(ids) - 1 - T)
    for k in range(start, len(ids)):
        prefix = ids[p:k]
        data = tok.decode(prefix)
        w = Corpus.from_bytes(data, tok, side_toks, main_ids=prefix).window(0, len(prefix), budgets, n=len(prefix))
        x = batch_inputs(collate([w], model.config.streams), "cpu")
        with torch.no_grad():
            logits, _ = model(x["idx"], tok_end=x["tok_end"], sides=x["sides"])
        total += float(torch.log_softmax(logits[0, -1].double(), -1)[ids[k]])
    return total


def test_likelihood_scoring_matches_a_direct_computation(toks):
    tok, side = toks["bpe300"], [toks["bytes"]]
    model = tiny_model(toks)
    scorer = evaluate.Scorer(model, tok, side, "cpu", batch_tokens=60)
    items = [("The quick brown", [" fox", " dog jumps", " straw"]),
             ("", ["She sells sea shells"]),  # empty context: the choice follows end-of-text directly
             (PLAIN[:150], [" strawberry tart", " x"]),  # longer than block_size: cropped from the left
             ("naïve café ", ["日本語", "🙂 ok"])]
    got = scorer.choice_scores(items)
    for (ctx, choices), scores in zip(items, got):
        for c, (ll, per_byte) in zip(choices, scores):
            ids = [tok.eot] + tok.encode(ctx) + tok.encode(c)
            ref = direct_loglik(model, tok, side, ids, len(ids) - len(tok.encode(c)))
            assert math.isclose(ll, ref, rel_tol=1e-4, abs_tol=1e-4), (ctx, c, ll, ref)
            assert math.isclose(per_byte, ll / len(c.encode()), rel_tol=1e-9)
    # accuracy: the highest summed (or per-byte) log-likelihood wins
    acc, acc_norm = probes.accuracy(got, [int(np.argmax([s[0] for s in got[0]])), 0, 1, 0])
    assert acc >= 0.5 and 0 <= acc_norm <= 1
    # continuation bpb after a context: the same numbers, pooled over bytes
    pairs = [("The quick brown", " fox jumps"), (PLAIN[:150], " over the lazy dog")]
    bpb = probes.pairs_bpb(scorer, [tok.encode(a) for a, _ in pairs], [tok.encode(b) for _, b in pairs], "")
    ref = -sum(direct_loglik(model, tok, side, [tok.eot] + tok.encode(a) + tok.encode(b), 1 + len(tok.encode(a)))
               for a, b in pairs) / (math.log(2) * sum(len(b.encode()) for _, b in pairs))
    assert math.isclose(bpb, ref, rel_tol=1e-4)


def test_greedy_generation_matches_sample_py(toks):
    tok, side = toks["bpe300"], [toks["bytes"]]
    model = tiny_model(toks, T=16)
    scorer = evaluate.Scorer(model, tok, side, "cpu", batch_tokens=20)
    prompts = ["Spell \"straw\":", "The quick brown fox jumps over the lazy", "a"]
    seqs = [[tok.eot] + tok.encode(p) for p in prompts]
    gen = scorer.greedy(seqs, [12, 12, 12])
    for p, g in zip(prompts, gen):
        start = bytes([EOT_BYTE]) + p.encode()
        out = sample.generate(model, tok, side, start, 12, top_k=1)
        out = out[0] if isinstance(out, tuple) else out
        full = out[len(start):]
        stop = re.search(rb"[\n\xff]", full)
        assert g == (full[:stop.end()] if stop else full), (p, g, full)

# ------------------------------------------------------------------------------------------------
# the script


def save_checkpoint(model, tok_specs, path):
    os.makedirs(path, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "config": {}, "step": 5,
                "best_val_loss": 9.9, "tokenizers": {s: Tokenizer(s).fingerprint for s in tok_specs}},
               os.path.join(path, "ckpt.pt"))
    return str(path)


def script_inputs(toks, tmp_path, probe_lines):
    """Two tiny checkpoints (without and with bytes), a text, a word list and a probe file of
    probe_lines, for evaluate.py's command line."""
    spec = toks["bpe300"].spec
    base = save_checkpoint(tiny_model(toks, streams=()), [spec], tmp_path / "out-base")
    byte = save_checkpoint(tiny_model(toks), [spec, "bytes"], tmp_path / "out-bytes")
    (tmp_path / "text.txt").write_text(TEXT * 3 + PLAIN)
    (tmp_path / "words.txt").write_text("\n".join(WORDS))
    probe = tmp_path / "probe.jsonl"
    probe.write_text(probe_lines)
    return base, byte, probe


def test_script_end_to_end(toks, tmp_path, capsys):
    base, byte, probe = script_inputs(
        toks, tmp_path, '{"context": "The quick brown", "choices": [" fox", " cat"], "answer": 0}\n\n'
                        '{"context": "sea", "choices": [" shells", " shore", " x"], "answer": 2, "id": "extra keys are fine"}\n')
    out_json, out_md = tmp_path / "res" / "eval.json", tmp_path / "eval.md"
    common = [base, byte, "--text", str(tmp_path / "text.txt"), "--words", str(tmp_path / "words.txt"),
              "--pairs", "6", "--ctx_chars", "80", "--cont_chars", "30", "--task_items", "2",
              "--probes", str(probe), "--batch_tokens", "300", "--device", "cpu"]
    res = evaluate.main(common + ["--noise", "drop:0,swap:0.1,antspeak", "--seg_rates", "0,0.5",
                                  "--json", str(out_json), "--md", str(out_md)])
    table = capsys.readouterr().out
    saved = json.load(open(out_json))
    assert saved == json.loads(json.dumps(res))
    assert open(out_md).read().strip() == table.strip()
    header = table.splitlines()[0]
    assert base in header and byte in header and table.splitlines()[2].count("|") == 4
    s = saved["settings"]
    assert s["seed"] == 1337 and s["noise"] == {"drop": 0.0, "swap": 0.1, "antspeak": 1.0} and s["seg_rates"] == [0, 0.5]
    assert s["n_pairs"] == 6 and s["tasks"]["items"]["spell"] == 2 and s["tasks"]["heldout_percent"] == tasks.HELDOUT_PERCENT
    for name in (base, byte):
        r = saved["checkpoints"][name]
        assert r["info"]["step"] == 5 and r["info"]["streams"] == ([] if name == base else ["bytes"])
        assert 0 < r["text"]["bpb"] < 20 and r["text"]["bytes"] == len((TEXT * 3 + PLAIN).encode())
        n = r["noise"]
        assert n["kinds"]["drop"]["delta"] == 0.0, "rate 0: the very same contexts"
        assert n["kinds"]["swap"]["delta"] != 0.0 and n["kinds"]["antspeak"]["delta"] != 0.0
        g = r["segmentation"]
        assert g["rates"]["0.0"]["delta"] == 0.0 and g["rates"]["0.0"]["tokens_split"] == 0
        assert g["rates"]["0.5"]["tokens_split"] > 0 and g["rates"]["0.5"]["delta"] != 0.0
        assert set(r["tasks"]) == set(tasks.FAMILIES) | {"mean"}
        assert all(0 <= r["tasks"][f][k] <= 1 for f in tasks.FAMILIES for k in ("acc", "acc_norm", "exact"))
        assert r["probes"]["probe"]["n"] == 2
    # the same seeds give the same numbers
    again = evaluate.main(common + ["--noise", "swap:0.1", "--seg_rates", "0.5", "--skip", "text", "tasks",
                                    "--json", str(tmp_path / "again.json")])
    for name in (base, byte):
        assert again["checkpoints"][name]["noise"]["kinds"]["swap"] == saved["checkpoints"][name]["noise"]["kinds"]["swap"]
        assert "text" not in again["checkpoints"][name] and "tasks" not in again["checkpoints"][name]


def test_script_refuses_bad_input(toks, tmp_path):
    spec = toks["bpe300"].spec
    base = save_checkpoint(tiny_model(toks, streams=()), [spec], tmp_path / "out-base")
    (tmp_path / "text.txt").write_text(TEXT)
    run = lambda *a: evaluate.main([base, "--text", str(tmp_path / "text.txt"), "--json", str(tmp_path / "e.json"),
                                    "--skip", "text", "noise", "segmentation", "tasks", *a])
    with pytest.raises(SystemExit, match="no checkpoint"):
        evaluate.main([str(tmp_path / "missing"), "--text", str(tmp_path / "text.txt")])
    for body, why in [('{"context": "a", "choices": [" b", " c"], "answer": 0}\nnot json\n', "line 2: not valid JSON"),
                      ('{"context": "a", "choices": [" b"], "answer": 0}\n', "line 1: 'choices'"),
                      ('{"context": "a", "choices": [" b", " c"], "answer": 2}\n', "line 1: 'answer'"),
                      ('{"context": "a", "choices": [" b", " c"], "answer": true}\n', "line 1: 'answer'"),
                      ('\n{"choices": [" b", " c"], "answer": 0}\n', "line 2: missing 'context'"),
                      ('{"context": "a", "choices": [" b", ""], "answer": 0}\n', "line 1: a choice is empty")]:
        (tmp_path / "p.jsonl").write_text(body)
        with pytest.raises(SystemExit, match=re.escape(why)):
            run("--probes", str(tmp_path / "p.jsonl"))
    # a checkpoint trained with another tokenizer than the one found here under its name
    ckpt = torch.load(os.path.join(base, "ckpt.pt"), weights_only=True)
    ckpt["tokenizers"][spec] = "0" * 16
    torch.save(ckpt, os.path.join(base, "ckpt.pt"))
    with pytest.raises(SystemExit, match="differs from the one the model was trained"):
        run()
