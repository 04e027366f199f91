"""
Adversarial character edits: a black-box greedy search for the k edits to a context that hurt a
model most, at a fixed budget of model queries, against random edits as the control, and the edits
found against one model replayed on another (transfer). evaluate.py's attack group runs it on the
noise probe's context/continuation pairs (objective: the continuation's bpb) and on the right
answers of the character tasks and of multiple-choice files (objective: the best distractor's
log-likelihood minus the answer's; the answer is wrong once that reaches 0).

An edit is one typo at a character position of the context: a letter replaced by a keyboard
neighbour or by itself in the other case, a letter inserted (a keyboard neighbour of the letter
beside it) or deleted, two neighbouring letters swapped. Only ASCII letters are written, deleted or
moved, so the text stays valid UTF-8. A character is edited once at most, and a deletion also locks
its neighbours, so that k edits never undo one another. Candidates come from an RNG seeded by
(seed, item, round) alone, never by the model: every checkpoint faces the same attacker.
"""
import math
import random
import re
import string
import sys
import time

import numpy as np

from lab.scorer import progress

LN2 = math.log(2)
KINDS = ("neighbour", "case", "insert", "delete", "swap")
LETTERS = frozenset(string.ascii_letters)
ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# a pair counts as broken when its continuation's bpb rises by more than this; the JSON keeps every
# pair's numbers, so other thresholds can be read off them later
THRESHOLD = 0.5
ITEMS_PER_CALL = 16  # items searched together: their candidates fill the scorer's batches


def _keyboard():
    """Each letter's neighbours on a QWERTY keyboard, whose rows are staggered: a key touches keys
    c and c+1 of the row above and c-1 and c of the row below."""
    near = {}
    for r, row in enumerate(ROWS):
        for c, ch in enumerate(row):
            around = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1),
                      (r + 1, c)]
            near[ch] = "".join(ROWS[i][j] for i, j in around
                               if 0 <= i < len(ROWS) and 0 <= j < len(ROWS[i]))
    return near


NEIGHBOURS = _keyboard()

# ------------------------------------------------------------------------------------------------
# edits: (kind, position, letter written) on a text and its lock (True: not to be edited)

def apply(text, lock, edit):
    """The text and lock after one edit."""
    kind, i, c = edit
    if kind in ("neighbour", "case"):
        return text[:i] + c + text[i + 1:], lock[:i] + (True,) + lock[i + 1:]
    if kind == "insert":
        return text[:i] + c + text[i:], lock[:i] + (True,) + lock[i:]
    if kind == "swap":
        return (text[:i] + text[i + 1] + text[i] + text[i + 2:],
                lock[:i] + (True, True) + lock[i + 2:])
    # delete: the neighbours are locked too (else deleting "a" from "xay" and inserting it back
    # would be two edits that change nothing)
    lock = lock[:i] + lock[i + 1:]
    return text[:i] + text[i + 1:], tuple(v or i - 1 <= j <= i for j, v in enumerate(lock))


def replay(text, lock, edits):
    for e in edits:
        text, lock = apply(text, lock, e)
    return text


def unlocked(text):
    return (False,) * len(text)


def quotes_locked(text):
    """A character task's context with its quoted strings locked: they define the right answer (an
    edit there changes what is right, not whether the model reads the question)."""
    lock = [False] * len(text)
    for m in re.finditer(r'"[^"]*"', text):
        lock[m.start():m.end()] = [True] * (m.end() - m.start())
    return tuple(lock)


def _like(c, case):
    return c.upper() if case.isupper() else c


def candidates(text, lock, key, n):
    """Up to n distinct single edits of text, drawn by an RNG seeded by key alone: a kind uniformly
    among those with somewhere to go, then a place and a letter uniformly."""
    rng, L = random.Random(key), len(text)
    free = lambda i: i < 0 or i >= L or not lock[i]  # the text's ends are free
    letter = [text[i] in LETTERS and not lock[i] for i in range(L)]
    where = {"neighbour": [i for i in range(L) if letter[i]]}
    where["case"] = where["neighbour"]
    where["delete"] = [i for i in range(L) if letter[i] and free(i - 1) and free(i + 1)]
    where["swap"] = [i for i in range(L - 1)
                     if letter[i] and letter[i + 1] and text[i] != text[i + 1]]
    where["insert"] = [g for g in range(L + 1) if free(g - 1) and free(g)
                       and (g > 0 and text[g - 1] in LETTERS or g < L and text[g] in LETTERS)]
    kinds = [k for k in KINDS if where[k]]
    out = {}
    for _ in range(20 * n):  # duplicates are drawn again; a short text may have fewer than n edits
        if len(out) == n or not kinds:
            break
        kind = rng.choice(kinds)
        i = rng.choice(where[kind])
        c = ""
        if kind == "neighbour":
            c = _like(rng.choice(NEIGHBOURS[text[i].lower()]), text[i])
        elif kind == "case":
            c = text[i].swapcase()
        elif kind == "insert":
            a = text[i - 1] if i > 0 and text[i - 1] in LETTERS else text[i]
            c = _like(rng.choice(NEIGHBOURS[a.lower()]), a)
        out.setdefault((kind, i, c), None)
    return list(out)

# ------------------------------------------------------------------------------------------------
# the search. items: (key, text, lock); objective(list of (item index, text)) -> values to raise

def greedy(items, objective, rounds, per_round, seed, stop):
    """rounds of: score up to per_round candidate edits of every item's current text, keep the
    best. An item whose value meets stop is left as it is. Per item: clean value, edits, value after
    each round, candidates scored."""
    state = [(text, lock) for _, _, text, lock in items]
    value = objective([(i, text) for i, _, text, _ in items])
    clean, edits = list(value), [[] for _ in items]
    trace, used = [[] for _ in items], [0] * len(items)
    for r in range(rounds):
        batch = []  # (item, edit, text, lock)
        for j, (_, key, _, _) in enumerate(items):
            if not stop(value[j]):
                text, lock = state[j]
                batch += [(j, e, *apply(text, lock, e))
                          for e in candidates(text, lock, f"attack:{seed}/{key}/{r}", per_round)]
        scores = objective([(items[j][0], text) for j, _, text, _ in batch]) if batch else []
        best = {}
        for (j, e, text, lock), v in zip(batch, scores):
            used[j] += 1
            if j not in best or v > best[j][0]:  # ties: the first drawn
                best[j] = (v, e, text, lock)
        for j, (v, e, text, lock) in best.items():
            value[j], state[j] = v, (text, lock)
            edits[j].append(e)
        for j in range(len(items)):
            trace[j].append(value[j])
    return clean, edits, trace, used


def random_edits(text, lock, key, rounds):
    """rounds edits, each drawn as the search draws its candidates: the control."""
    edits = []
    for r in range(rounds):
        e = candidates(text, lock, f"{key}/{r}", 1)
        if not e:
            break
        edits.append(e[0])
        text, lock = apply(text, lock, e[0])
    return edits


def values_at(items, edit_lists, objective, ks):
    """Per item, the value after the first k of its edits, for each k."""
    batch = [(i, replay(text, lock, edits[:k]))
             for (i, _, text, lock), edits in zip(items, edit_lists) for k in ks]
    v = objective(batch)
    return [v[n * len(ks):(n + 1) * len(ks)] for n in range(len(items))]


def search(items, objective, ks, queries, seed, stop=lambda v: False, name="", what="attack"):
    """The greedy search (max(ks) rounds of queries // max(ks) candidates: the state after k edits
    is the one after k rounds) and the random control, for every item; progress on stderr. Per
    item: key, clean value, edits, values after k edits, random edits and theirs, queries spent."""
    rounds, out, t0 = max(ks), [], time.time()
    for s in range(0, len(items), ITEMS_PER_CALL):
        chunk = [(i, *items[i]) for i in range(s, min(s + ITEMS_PER_CALL, len(items)))]
        clean, edits, trace, used = greedy(chunk, objective, rounds, max(1, queries // rounds),
                                           seed, stop)
        rand = [random_edits(text, lock, f"attack-random:{seed}/{key}", rounds)
                for _, key, text, lock in chunk]
        rand_values = values_at(chunk, rand, objective, ks)
        for j, (_, key, _, _) in enumerate(chunk):
            out.append(dict(key=key, clean=clean[j], edits=[list(e) for e in edits[j]],
                            values=[trace[j][k - 1] for k in ks],
                            random_edits=[list(e) for e in rand[j]], random_values=rand_values[j],
                            queries=used[j]))
        if time.time() - t0 > 2:  # chunks cost about the same: a fair pace
            progress(name, what, len(out), len(items), t0, unit="item ")
    if time.time() - t0 > 2:
        print(file=sys.stderr)
    return out

# ------------------------------------------------------------------------------------------------
# objectives through the Scorer (lab/scorer.py), and what evaluate.py attacks

def bpb_objective(scorer, pairs):
    """A context's value: its pair's continuation bpb after it (pairs: (context, continuation),
    tokenized apart and scored as the noise probe scores them)."""
    tok = scorer.main_tok
    conts = [tok.encode(c) for _, c in pairs]
    nbytes = [len(c.encode("utf-8")) for _, c in pairs]

    def objective(batch):
        seqs = [([tok.eot] + tok.encode(x) + conts[i], len(conts[i])) for i, x in batch]
        losses = scorer.continuation_losses(seqs)
        return [float(l.sum()) / (LN2 * nbytes[i]) for (i, _), l in zip(batch, losses)]
    return objective


def margin_objective(scorer, items):
    """A context's value: the best distractor's summed log-likelihood minus the answer's (items:
    (context, choices, label)); 0 or more is a wrong answer (ties count against it, as in
    accuracy)."""
    def objective(batch):
        scores = scorer.choice_scores([(x, items[i][1]) for i, x in batch])
        return [max(ll for m, (ll, _) in enumerate(s) if m != items[i][2]) - s[items[i][2]][0]
                for (i, _), s in zip(batch, scores)]
    return objective


def wrong(margin):
    return margin >= 0


def targets(scorer, pairs, task_items=None, probe_files=None, n_items=0):
    """What the attack group attacks: path in its results -> (items, objective). The pairs'
    contexts, whole; the first n_items of each task family (outside the quoted strings) and of each
    probe file."""
    out = {}
    if pairs:
        items = [(f"pair{i}", x, unlocked(x)) for i, (x, _) in enumerate(pairs)]
        out["continuation",] = (items, bpb_objective(scorer, pairs))
    sets = [("tasks", f, its, "label", quotes_locked) for f, its in (task_items or {}).items()]
    sets += [("probes", p, its, "answer", unlocked) for p, (_, its) in (probe_files or {}).items()]
    for group, name, its, label, lock in sets:
        its = its[:n_items]
        if its:
            items = [(f"{name}/{i}", it["context"], lock(it["context"]))
                     for i, it in enumerate(its)]
            mc = [(it["context"], it["choices"], it[label]) for it in its]
            out[group, name] = (items, margin_objective(scorer, mc))
    return out


def at_path(res, path, make=False):
    """res[path[0]][path[1]]...; None where missing (make: the dicts on the way are created)."""
    for p in path:
        if p not in res and not make:
            return None
        res = res.setdefault(p, {})
    return res

# ------------------------------------------------------------------------------------------------
# the numbers

def summary(ks, clean, at, random_at=None, right=None):
    """Per k, of pairs: the mean Δbpb (after k edits - clean), the half-width of its 95% interval,
    the share of pairs over THRESHOLD; of answers (right: the indices of the right ones): the share
    turned wrong. The same of the random control (random_at)."""
    out = {str(k): {} for k in ks}
    for prefix, values in (("", at), ("random_", random_at)):
        for n, k in enumerate(ks) if values is not None else ():
            v = out[str(k)]
            if right is not None:
                v[prefix + "turned_wrong"] = (float(np.mean([wrong(values[i][n]) for i in right]))
                                              if right else None)
                continue
            d = np.array([a[n] - c for a, c in zip(values, clean)])
            v[prefix + "delta"] = float(d.mean())
            v[prefix + "delta_ci95"] = (float(1.96 * d.std(ddof=1) / math.sqrt(len(d)))
                                        if len(d) > 1 else None)
            v[prefix + "share_over"] = float(np.mean(d > THRESHOLD))
    return out


def pooled(results, ks):
    """The answers' shares over several targets, each weighted by its right answers."""
    results = [r for r in results if r["right"]]
    total = sum(r["right"] for r in results)
    keys = results[0]["k"][str(ks[0])] if results else ["turned_wrong"]
    share = lambda k, key: sum(r["right"] * r["k"][k][key] for r in results) / total
    return dict(right=total, k={str(k): {key: share(str(k), key) if total else None
                                         for key in keys} for k in ks})


def attack_probe(scorer, pairs, task_items, probe_files, ks, queries, seed, n_items):
    """The attack group on one domain. Per target: the settings, the summary per k, and each
    item's edits and values (what transfer replays); the tasks pooled under tasks/mean."""
    out = {}
    for path, (items, objective) in targets(scorer, pairs, task_items, probe_files,
                                            n_items).items():
        answers = path[0] != "continuation"
        recs = search(items, objective, ks, queries, seed, wrong if answers else lambda v: False,
                      scorer.name, "attack: " + "/".join(path))
        clean = [r["clean"] for r in recs]
        right = [i for i, c in enumerate(clean) if not wrong(c)] if answers else None
        searched = [r for r in recs if r["queries"]]  # answers wrong from the start are not
        mean = lambda f: float(np.mean([f(r) for r in searched])) if searched else 0.0
        res = at_path(out, path, make=True)
        res.update(n=len(recs), ks=list(ks), candidates_per_round=max(1, queries // max(ks)),
                   queries_per_item=mean(lambda r: r["queries"]),
                   edits={str(k): mean(lambda r: min(k, len(r["edits"]))) for k in ks},
                   k=summary(ks, clean, [r["values"] for r in recs],
                             [r["random_values"] for r in recs], right))
        if answers:
            res["right"] = len(right)
        else:
            res.update(clean_bpb=float(np.mean(clean)), threshold=THRESHOLD,
                       examples=[dict(context=x, attacked=replay(x, lock, r["edits"]))
                                 for (_, x, lock), r in zip(items[:3], recs)])
        res["items"] = recs
    if "tasks" in out:
        out["tasks"]["mean"] = pooled(out["tasks"].values(), ks)
    return out


def transfer(scorer, pairs, task_items, probe_files, n_items, own, source, source_name):
    """This model (scorer; own: its attack results, to which this adds) under the edits found
    against another model (source: its attack results on the same items), in each target's
    transfer/source_name: Δbpb against this model's own clean bpb, or the share of the answers
    right for both models that the source's edits turn wrong for this one."""
    for path, (items, objective) in targets(scorer, pairs, task_items, probe_files,
                                            n_items).items():
        mine, theirs = at_path(own, path), at_path(source, path)
        if mine is None or theirs is None:
            continue
        at = values_at([(i, *it) for i, it in enumerate(items)],
                       [r["edits"] for r in theirs["items"]], objective, mine["ks"])
        clean = [r["clean"] for r in mine["items"]]
        res = mine.setdefault("transfer", {})[source_name] = dict(n=len(clean))
        right = None
        if path[0] != "continuation":
            right = [i for i, (c, r) in enumerate(zip(clean, theirs["items"]))
                     if not wrong(c) and not wrong(r["clean"])]
            res["right"] = len(right)
        res["k"] = summary(mine["ks"], clean, at, right=right)
    if "tasks" in own:
        fams = [v["transfer"][source_name] for f, v in own["tasks"].items()
                if f != "mean" and source_name in v.get("transfer", {})]
        own["tasks"]["mean"].setdefault("transfer", {})[source_name] = pooled(
            fams, [int(k) for k in own["tasks"]["mean"]["k"]])
