"""
Character tasks over words (the character-level task families of the CUTE benchmark, plus first/last
letter and counting), for training documents and for evaluation.

Words. A word is lowercase ASCII letters, MIN_LEN..MAX_LEN long, and not a word of the task
templates. Words come from text that the user has, never from the network: `words_from_text` takes
every such word that stands alone in running text (not part of a capitalized, accented or hyphenated
word) and occurs at least twice; `load_words` reads any text file (a word list with one word per
line works too, each word counting once). prepare.py builds its list from the train split (or
--task_words FILE) and saves it as <out>/task_words.txt, so that evaluation can use the very same
list.

Split. A word is held out when a hash of the word alone says so (HELDOUT_PERCENT of all strings):
the rule needs no list, so it is the same for any word list, and a held-out word stays held out when
lists change. Training documents use train words only, and no string in them (a task's word, its
answer, an edited word) is a held-out word. Given the main tokenizer (prepare.py gives it), no token
of them is one either: with GPT-2, `Spell "carvers": c a r v e r s` spells out the token "car" (of
'"', 'car', 'vers', '"'), the very token of `Spell "car":`, a held-out word. So a held-out word that
is a single token is one whose letters no task document ever showed: the fair test of
generalisation. Evaluation reports held-out words (single-token and multi-token apart) and, to tell
memorisation from it, train words.

Format. One task instance is a context and an answer, the answer starting with a space:

    Spell "there": t h e r e
    Does "there" contain "h"? yes
    Replace every "e" with "a" in "there": thara

A training document is a few such lines, each ending with a newline. Evaluation starts a new
document with one context, and scores the answer (against distractors, and by greedy generation up
to the newline). The context ends with ':' or '?' and the answer starts with a space, a boundary
that GPT-2-style pre-tokenizers never cross: the context and the answer tokenized apart give the
tokens of the whole line."""
import hashlib
import itertools
import os
import random
import re
from collections import Counter

from data import write_atomic

MIN_LEN, MAX_LEN = 3, 12
HELDOUT_PERCENT = 20
HELDOUT_SALT = "bytecross-heldout-v1"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# every word of the templates below: never a task word (it appears in every prompt)
TEMPLATE_WORDS = frozenset("spell join first last letter of count in does contain yes no add after "
                           "every delete replace with swap and".split())
# a lowercase word standing alone: no letter, digit, apostrophe or hyphen glued to either side
_WORD_RE = re.compile(r"(?<![\w'’-])[a-z]+(?![\w'’-])")


def word_ok(w):
    return (MIN_LEN <= len(w) <= MAX_LEN and w.isascii() and w.isalpha() and w.islower()
            and w not in TEMPLATE_WORDS)


def is_heldout(w):
    """The train/held-out rule: a hash of the word alone (the same for every word list)."""
    h = hashlib.sha256((HELDOUT_SALT + ":" + w).encode()).digest()
    return int.from_bytes(h[:8], "little") % 100 < HELDOUT_PERCENT


def words_from_text(texts, min_count=2):
    """Task words in texts (an iterable of str), most frequent first (ties alphabetical)."""
    counts = Counter()
    for t in texts:
        counts.update(_WORD_RE.findall(t))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, c in ranked if c >= min_count and word_ok(w)]


def load_words(path):
    """Task words of a text file (UTF-8): a word list, or any text."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"word file {path} not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        words = words_from_text([f.read()], min_count=1)
    if not words:
        raise ValueError(f"{path} holds no task words "
                         f"(lowercase a-z words of {MIN_LEN}-{MAX_LEN} letters)")
    return words


def save_words(words, path):
    write_atomic(path, "".join(w + "\n" for w in words))


def split_words(words):
    """(train words, held-out words), each sorted, from any list (invalid words dropped)."""
    ok = sorted({w for w in words if word_ok(w)})
    return [w for w in ok if not is_heldout(w)], [w for w in ok if is_heldout(w)]

# ------------------------------------------------------------------------------------------------
# task families: each returns (context, answer, distractors in order of preference) or None when the
# word does not suit the family. Distractors are near misses: what a model that half-reads letters
# says.

def _edits(w, rng, k):
    """k distinct single-letter edits of w (swap adjacent, substitute, delete, insert)."""
    out = []
    for _ in range(50 * k):
        if len(out) == k:
            break
        i = rng.randrange(len(w))
        op = rng.choice("sdi" + ("w" if len(w) > 1 else ""))
        if op == "w":
            i = min(i, len(w) - 2)
            v = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        elif op == "s":
            v = w[:i] + rng.choice(LETTERS) + w[i + 1:]
        elif op == "d":
            v = w[:i] + w[i + 1:]
        else:
            v = w[:i] + rng.choice(LETTERS) + w[i:]
        if v and v != w and v not in out:
            out.append(v)
    return out


def _spell(w, rng, pool):
    return f'Spell "{w}":', " " + " ".join(w), [" " + " ".join(v) for v in _edits(w, rng, 3)]


def _spell_inverse(w, rng, pool):
    # distractors: real words that look alike (same first letter, length within one), so that only
    # reading the letters tells them apart
    alike = [v for v in pool if v != w and v[0] == w[0] and abs(len(v) - len(w)) <= 1]
    others = [v for v in pool if v != w]
    wrong = (rng.sample(alike, min(3, len(alike))) + rng.sample(others, min(3, len(others)))
             + _edits(w, rng, 3))
    return f'Join "{" ".join(w)}":', " " + w, [" " + v for v in wrong]


def _position_letter(name, pos):
    def family(w, rng, pool):
        right = w[pos]
        inside, outside = sorted(set(w) - {right}), [c for c in LETTERS if c not in w]
        # other letters of the word first: they test the position, not just the letters present
        wrong = rng.sample(inside, len(inside)) + rng.sample(outside, min(3, len(outside)))
        return f'{name} letter of "{w}":', " " + right, [" " + c for c in wrong]
    return family


def _count_letter(w, rng, pool):
    absent = [c for c in LETTERS if c not in w]
    c = rng.choice(sorted(set(w))) if rng.random() < 0.8 or not absent else rng.choice(absent)
    n = w.count(c)
    wrong = sorted((x for x in range(0, n + 4) if x != n), key=lambda x: (abs(x - n), x))
    return f'Count "{c}" in "{w}":', f" {n}", [f" {x}" for x in wrong]


def _contains_letter(w, rng, pool):
    absent = [c for c in LETTERS if c not in w]
    yes = rng.random() < 0.5 or not absent
    c = rng.choice(sorted(set(w))) if yes else rng.choice(absent)
    return f'Does "{w}" contain "{c}"?', " yes" if yes else " no", [" no" if yes else " yes"]


def _insert_letter(w, rng, pool):
    d, c = rng.choice(sorted(set(w))), rng.choice(LETTERS)
    ans = w.replace(d, d + c)
    e = rng.choice(sorted(set(w) - {d}) or [d])
    wrong = [w, w.replace(d, c + d), w.replace(e, e + c), w.replace(d, d + c, 1)]
    wrong += _edits(ans, rng, 3)
    return f'Add "{c}" after every "{d}" in "{w}":', " " + ans, [" " + v for v in wrong]


def _delete_letter(w, rng, pool):
    if len(set(w)) < 2:
        return None  # deleting would leave nothing
    d = rng.choice(sorted(set(w)))
    ans = w.replace(d, "")
    e = rng.choice(sorted(set(w) - {d}))
    wrong = [w, w.replace(d, "", 1), w.replace(e, "")] + _edits(ans, rng, 3)
    return f'Delete every "{d}" in "{w}":', " " + ans, [" " + v for v in wrong if v]


def _substitute_letter(w, rng, pool):
    d = rng.choice(sorted(set(w)))
    c = rng.choice([x for x in LETTERS if x != d])
    ans = w.replace(d, c)
    e = rng.choice(sorted(set(w) - {d}) or [d])
    wrong = [w, w.replace(d, c, 1), w.replace(e, c), w.replace(c, d) if c in w else ""]
    wrong += _edits(ans, rng, 3)
    return f'Replace every "{d}" with "{c}" in "{w}":', " " + ans, [" " + v for v in wrong if v]


def _swap_letters(w, rng, pool):
    if len(set(w)) < 2:
        return None
    a, b = rng.sample(sorted(set(w)), 2)
    swap = lambda s, x, y: s.translate(str.maketrans(x + y, y + x))
    ans = swap(w, a, b)
    rest = sorted(set(w) - {a})
    c = rng.choice(rest) if len(rest) > 1 else b
    wrong = [w, swap(w, a, c) if c != b else "", ans[::-1]] + _edits(ans, rng, 3)
    return f'Swap "{a}" and "{b}" in "{w}":', " " + ans, [" " + v for v in wrong if v]


FAMILIES = {
    "spell": _spell,
    "spell_inverse": _spell_inverse,
    "first_letter": _position_letter("First", 0),
    "last_letter": _position_letter("Last", -1),
    "count_letter": _count_letter,
    "contains_letter": _contains_letter,
    "insert_letter": _insert_letter,
    "delete_letter": _delete_letter,
    "substitute_letter": _substitute_letter,
    "swap_letters": _swap_letters,
}
N_CHOICES = 4  # answer and three distractors (contains_letter: yes or no)


def instance(family, word, rng, pool=()):
    """One task instance as a dict (family, word, context, answer, choices, label), or None if
    `word` does not suit `family`. choices holds the answer (at index label) and up to
    N_CHOICES-1 distractors."""
    made = FAMILIES[family](word, rng, pool)
    if made is None:
        return None
    context, answer, wrong = made
    distinct = []
    for v in wrong:
        if v != answer and v not in distinct:
            distinct.append(v)
    choices = distinct[:N_CHOICES - 1] + [answer]
    rng.shuffle(choices)
    return dict(family=family, word=word, context=context, answer=answer, choices=choices,
                label=choices.index(answer))


def line_words(text):
    """Every string of letters in a task text that could be a task word (what the held-out check
    reads)."""
    return [m.lower() for m in re.findall(r"[A-Za-z]+", text) if m.lower() not in TEMPLATE_WORDS]


def clean_for_training(inst):
    """No held-out word anywhere in the line: not the word, not its answer, not an edited string."""
    words = line_words(inst["context"] + inst["answer"])
    return not any(word_ok(w) and is_heldout(w) for w in words)


def heldout_token_ids(token_bytes):
    """Ids of the tokens whose text is a held-out word, alone or after a space ("car", " car"), from
    a tokenizer's table of token bytes."""
    out = set()
    for i, b in enumerate(token_bytes):
        text = b[1:] if b.startswith(b" ") else b
        if text.isascii() and word_ok(text.decode()) and is_heldout(text.decode()):
            out.add(i)
    return out


def eval_items(words, family, n, seed, group="heldout", groups=None):
    """Up to n instances of one family over held-out words, or over the words of another group
    (groups: word_groups(words, ...)), seeded: the same for any checkpoint with the same main
    tokenizer. Distractor words come from the train words for the group 'train', else from all
    held-out words."""
    train, heldout = split_words(words)
    pool = heldout if group == "heldout" else groups[group]
    # the held-out items keep the seed they always had: earlier numbers stay comparable
    rng = random.Random(f"{seed}/{family}" if group == "heldout" else f"{seed}/{family}/{group}")
    items = []
    for w in rng.sample(pool, len(pool)):
        if len(items) == n:
            break
        inst = instance(family, w, rng, train if group == "train" else heldout)
        if inst is not None:
            items.append(inst)
    return items


def word_groups(words, encode):
    """Evaluation words by what a model could have learned of them: 'train' (task documents may show
    them: memorisation), and held-out words (never in a task document: generalisation), split by the
    main tokenizer (`encode`: text -> ids) into 'heldout_single_token' (" word" is one token) and
    'heldout_multi_token'."""
    train, heldout = split_words(words)
    single = {w for w in heldout if len(encode(" " + w)) == 1}
    return {"train": train, "heldout_single_token": [w for w in heldout if w in single],
            "heldout_multi_token": [w for w in heldout if w not in single]}

# ------------------------------------------------------------------------------------------------
# training documents

class TaskDocuments:
    """Seeded stream of training documents: 1..max_lines task lines each, families uniform, train
    words only. With the main tokenizer `tok`, no line holds a token whose text is a held-out word
    either."""

    def __init__(self, words, seed=0, max_lines=8, families=None, tok=None):
        self.words, _ = split_words(words)
        if not self.words:
            raise ValueError("the word list holds no train words (all held out, or none valid)")
        self.rng, self.max_lines = random.Random(seed), max_lines
        self.families = sorted(families or FAMILIES)
        self.tok = tok
        self.heldout_tokens = heldout_token_ids(tok.token_bytes) if tok is not None else set()

    def token_clean(self, text):
        if not self.heldout_tokens:
            return True
        return not self.heldout_tokens.intersection(self.tok.encode(text))

    def line(self):
        for _ in range(10000):
            inst = instance(self.rng.choice(self.families), self.rng.choice(self.words), self.rng)
            if inst is None or not clean_for_training(inst):
                continue
            line = inst["context"] + inst["answer"]
            if self.token_clean(line):
                return line + "\n"
        raise RuntimeError("could not build a task line from train words (is the word list tiny?)")

    def document(self):
        return "".join(self.line() for _ in range(self.rng.randint(1, self.max_lines)))


def mix_task_documents(tagged, main_tok, fraction, words_path=None, out=None, seed=0,
                       calibration_chars=2_000_000):
    """prepare.py's hook: task documents mixed into the train split of `tagged` ((split, text)
    documents) so that they make up `fraction` of its main-stream tokens (end-of-text tokens
    included).

    Words come from words_path, else from the first `calibration_chars` characters of train text
    (words occurring at least twice). The same text calibrates tokens per character, which estimates
    text tokens as documents stream by (tokenizing everything twice would be slow); task tokens are
    counted exactly. Task documents are spread evenly between the text documents. Returns
    (generator, info); info is complete once the generator is exhausted (prepare.py then records the
    actual fraction)."""
    if not 0 < fraction < 1:
        raise SystemExit("error: --tasks_fraction must be between 0 and 1")
    it = iter(tagged)
    head, sample, size = [], [], 0
    for split, text in it:
        head.append((split, text))
        if split == "train":
            sample.append(text)
            size += len(text)
            if size >= calibration_chars:
                break
    if not sample:
        raise SystemExit("error: --tasks_fraction needs train documents, and the source has none")
    try:
        words = load_words(words_path) if words_path else words_from_text(sample)
        docs = TaskDocuments(words, seed, tok=main_tok)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: task words: {e}")
    info = dict(fraction=fraction, seed=seed, words_source=words_path or "train text",
                n_words=len(words), n_train_words=len(docs.words), heldout_percent=HELDOUT_PERCENT,
                heldout_tokens=len(docs.heldout_tokens), docs=0, tokens=0)
    if out:
        info["words_file"] = os.path.join(out, "task_words.txt")
        save_words(words, info["words_file"])
    per_char = sum(len(main_tok.encode(t)) for t in sample) / max(1, size)
    ratio = fraction / (1 - fraction)

    def generate():
        text_tokens = 0.0
        for split, text in itertools.chain(head, it):
            yield split, text
            if split != "train":
                continue
            text_tokens += len(text) * per_char + 1  # + 1: the end-of-text token before it
            while info["tokens"] < ratio * text_tokens:
                doc = docs.document()
                info["docs"] += 1
                info["tokens"] += len(main_tok.encode(doc)) + 1
                yield "train", doc

    return generate(), info
