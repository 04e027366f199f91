"""sample.py: generation grows the byte stream exactly as training sees text; bad input is refused."""
import os

import pytest
import torch

import sample
from checkpoint import load_checkpoint
from conftest import PLAIN
from data import Corpus, batch_inputs, collate
from tokenizers import EOT_BYTE, Tokenizer


def test_sampling_prints_the_prompt_and_more(trained, capsys):
    sample.main(["--out_dir", trained, "--start", "The straw", "--max_new_tokens", "12", "--num_samples", "2",
                 "--device", "cpu"])
    texts = [t.strip("\n") for t in capsys.readouterr().out.split("-" * 60) if t.strip()]
    assert len(texts) == 2 and all(t.startswith("The straw") and len(t) > len("The straw") for t in texts)


def test_incremental_generation_matches_one_full_pass(trained):
    """Greedy tokens generated one at a time (byte stream rebuilt after each) are the argmax of one
    forward pass over the whole result: sampling feeds the model what training fed it."""
    model, _ = load_checkpoint(trained)
    main = Tokenizer(model.config.tokenizer)
    sides = [Tokenizer(s.tokenizer) for s in model.config.streams]
    start = bytes([EOT_BYTE]) + PLAIN[:20].encode()
    n0 = len(Corpus.from_bytes(start, main, []).ids)
    out, ids = sample.generate(model, main, sides, start, 15, temperature=1.0, top_k=1)
    assert len(ids) == n0 + 15 and main.decode(ids) == out
    c = Corpus.from_bytes(out, main, sides, main_ids=ids)
    w = c.window(0, len(ids) - 1, [(t, s.budget) for t, s in zip(sides, model.config.streams)])
    with torch.no_grad():
        logits, _ = model(**{k: v for k, v in batch_inputs(collate([w], model.config.streams), "cpu").items() if k != "targets"})
    assert logits[0, n0 - 1:, : main.vocab_size].argmax(-1).tolist() == ids[n0:]


def test_bad_prompts_and_checkpoints(trained, tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    with pytest.raises(SystemExit, match="not valid UTF-8"):
        sample.main(["--out_dir", trained, f"--start=FILE:{bad}"])
    with pytest.raises(SystemExit, match="not valid UTF-8"):
        sample.main(["--out_dir", trained, "--start", "caf\udce9"])  # how a shell's invalid bytes arrive
    with pytest.raises(SystemExit, match="no checkpoint"):
        sample.main(["--out_dir", str(tmp_path / "nothing")])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="not a readable bytecross checkpoint"):
        sample.main(["--out_dir", str(garbage)])
    other = tmp_path / "other.pt"
    ckpt = torch.load(os.path.join(trained, "ckpt.pt"), weights_only=True)
    ckpt["model_config"]["n_layer"] += 1  # a checkpoint whose weights do not fit its stated architecture
    torch.save(ckpt, other)
    with pytest.raises(SystemExit, match="does not fit"):
        sample.main(["--out_dir", str(other)])
    retrained = tmp_path / "retokenized.pt"
    ckpt = torch.load(os.path.join(trained, "ckpt.pt"), weights_only=True)
    ckpt["tokenizers"] = {spec: "0" * 16 for spec in ckpt["tokenizers"]}  # trained with other vocabularies
    torch.save(ckpt, retrained)
    with pytest.raises(SystemExit, match="differs from the one the model was trained with"):
        sample.main(["--out_dir", str(retrained)])


@pytest.mark.parametrize("block_size", [8, 13])
def test_context_from_a_suffix_is_the_window_of_the_whole_text(toks, block_size):
    """Generation rebuilds only the last block_size tokens' text, from the word before them; every step's
    window equals the one built from all the text so far (a side BPE stream included, whose words must not
    be cut), at a cost that does not grow with the text."""
    from model import GPT, GPTConfig
    from test_model import BYTES, randomize_cross
    main, side = toks["bpe300"], [toks["bytes"], toks["bpe400"]]
    streams = [BYTES, dict(BYTES, tokenizer="bpe400", budget=64, locality=1)]
    torch.manual_seed(0)
    cfg = GPTConfig(tokenizer="bpe300", vocab_size=main.vocab_size, block_size=block_size, n_layer=1, n_head=2,
                    n_embd=32, streams=[dict(s, vocab_size=t.vocab_size) for s, t in zip(streams, side)])
    model = GPT(cfg).eval()
    randomize_cross(model)
    data = bytes([EOT_BYTE]) + (PLAIN[:150] + "\n\n  Hello wörld,\tstrawberry  \xff tarts").encode()
    ids = main.encode_any_bytes(data)
    starts = [0]
    for t in ids:
        starts.append(starts[-1] + len(main.token_bytes[t]))
    budgets = [(t, s.budget) for t, s in zip(side, cfg.streams)]
    for k in range(block_size + 1, len(ids) + 1):  # the text so far: its first k tokens
        ctx, p, n = sample.context(data[:starts[k]], ids[:k], starts[:k + 1], main, side, block_size)
        whole = Corpus.from_bytes(data[:starts[k]], main, side, main_ids=ids[:k])  # all the text so far
        got, want = ctx.window(p, n, budgets), whole.window(k - n, n, budgets)
        assert (got["idx"] == want["idx"]).all() and (got["tok_end"] == want["tok_end"]).all()
        for (a, b) in zip(got["sides"], want["sides"]):
            assert all((x == y).all() for x, y in zip(a, b)), f"side stream differs at {k} tokens"
