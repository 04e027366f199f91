"""
Generate text from a trained checkpoint. The byte stream (and any side stream) grows with the bytes
of each generated token, exactly as during training.

    python sample.py --out_dir=out-cpu-demo --start="ROMEO:" --num_samples=2 --max_new_tokens=200
    python sample.py --out_dir=out-bytes --start=FILE:prompt.txt --temperature=0.7
"""
import argparse
import bisect
import sys

import torch

from checkpoint import open_trained
from data import WHITESPACE, Corpus, batch_inputs, make_batch
from runtime import pick_device
from tokenizers import EOT_BYTE, EOT_TEXT


def prompt_bytes(start):
    """The prompt as UTF-8 bytes: a string, or FILE:path. Invalid UTF-8 is refused with its
    position."""
    if start.startswith("FILE:"):
        data = open(start[5:], "rb").read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SystemExit(f"error: {start[5:]} is not valid UTF-8 (byte {e.start}: "
                             f"{data[e.start:e.start + 4]!r})")
        return data
    try:
        return start.encode("utf-8")
    except UnicodeEncodeError as e:
        # the shell passed bytes that are not UTF-8 (they arrive as surrogates)
        raise SystemExit(f"error: the prompt is not valid UTF-8 (character {e.start}); "
                         "pass UTF-8 text or FILE:path")


def word_start(data, b):
    """Where the side tokenizers' word holding byte b begins: a side stream tokenized from there on
    is the same as one tokenized from the start of the text (data.side_stream cuts at whitespace
    runs and EOT)."""
    if data[b] == EOT_BYTE:
        return b
    # back to the start of the word, then over the whitespace before it
    if data[b] not in WHITESPACE:
        while b > 0 and data[b - 1] not in WHITESPACE and data[b - 1] != EOT_BYTE:
            b -= 1
    while b > 0 and data[b - 1] in WHITESPACE:
        b -= 1
    return b


def context(data, ids, starts, main_tok, side_toks, T):
    """The window of the last T tokens, built from a suffix of the text only (cost independent of
    its length), yet what a window of the whole text holds: returns
    (corpus, first token, tokens)."""
    p = max(0, len(ids) - T)
    begin = word_start(data, starts[p])
    first = bisect.bisect_right(starts, begin) - 1  # the token holding that word start
    corpus = Corpus.from_bytes(data[starts[first]:], main_tok, side_toks, main_ids=ids[first:])
    return corpus, p - first, len(ids) - p


@torch.no_grad()
def generate(model, main_tok, side_toks, data, max_new_tokens, temperature=1.0, top_k=None,
             device="cpu"):
    """Extend bytes `data` (which may hold EOT bytes) by max_new_tokens main tokens.
    Returns the bytes and the main ids (the prompt's canonical ids, then the generated ones)."""
    c = model.config
    ids = list(Corpus.from_bytes(data, main_tok, []).ids)
    starts = [0]
    for t in ids:
        starts.append(starts[-1] + len(main_tok.token_bytes[t]))
    for _ in range(max_new_tokens):
        ctx, p, n = context(data, ids, starts, main_tok, side_toks, c.block_size)
        x = batch_inputs(make_batch([(ctx, p, n)], side_toks, c.streams, n, trim=True), device)
        logits, _ = model(x["idx"], tok_end=x["tok_end"], sides=x["sides"])
        logits = logits[0, -1, : main_tok.vocab_size].float() / max(temperature, 1e-6)
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits[logits < kth] = -float("inf")
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1))
        ids.append(nxt)
        data += main_tok.token_bytes[nxt]
        starts.append(len(data))
    return data, ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out", help="training output folder (or a checkpoint file)")
    p.add_argument("--start", default="",
                   help="prompt text, or FILE:path (default: start a new document)")
    p.add_argument("--num_samples", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    prompt = prompt_bytes(args.start)
    model, main_tok, side_toks, _ = open_trained(args.out_dir, device)
    # dense masks are small at sampling sizes, and need no length constraints
    model.attention = "sdpa"
    torch.manual_seed(args.seed)
    start = bytes([EOT_BYTE]) + prompt  # like every training document
    for i in range(args.num_samples):
        out, _ = generate(model, main_tok, side_toks, start, args.max_new_tokens, args.temperature,
                          args.top_k, device)
        # each end-of-text byte shown as the end-of-text token, on a line of its own
        shown = out[1:].replace(bytes([EOT_BYTE]), f"\n{EOT_TEXT}\n".encode())
        text = shown.decode("utf-8", errors="replace")
        print(text)
        print("-" * 60)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
