"""sample.py: generation grows the byte stream exactly as training sees text; bad input is refused."""
import os

import pytest
import torch

import sample
from conftest import PLAIN
from data import Corpus, collate
from tokenizers import EOT_BYTE, Tokenizer
from model import batch_inputs, load_checkpoint


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
