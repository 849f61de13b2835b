"""Pretrain a small causal LM offline, for the prompt loop's causal-LM scorer where no hub is reachable.

Users online name a hub model (``scorer_model: gpt2``). This machine reaches no hub and ships no
pretrained causal LM, so this script trains a small GPT-2 from scratch on English that is here:
the glosses and examples of WordNet 3.0 (Debian's ``wordnet-base``, ~117,000 definitions) and the
utterances of CLINC150's *training* split (never val or test, and never the intent labels, so the
prompt loop stays zero-shot on the rows it is scored on). It writes a safetensors GPT-2 with its
byte-level BPE tokenizer to ``--out`` (default ``/work/cache/tiny-gpt2``) and a README.txt with
its held-out perplexity, size and training cost.

    python -m bench.tiny_lm [--steps 4000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

WORDNET = Path("/usr/share/wordnet")
_GLOSS = re.compile(r"\|\s*(.+?)\s*$")


def wordnet_sentences(folder: Path = WORDNET) -> list[str]:
    """Each synset's gloss and its quoted examples, as plain sentences."""
    sentences = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # the licence header
            found = _GLOSS.search(line)
            if not found:
                continue
            for piece in found.group(1).split(";"):
                text = piece.strip().strip('"').strip()
                if len(text) > 3:
                    sentences.append(text)
    return sentences


def clinc_train_texts() -> list[str]:
    from worker.ml.clinc150 import clinc150_folder

    rows = (json.loads(line) for line in (clinc150_folder("full") / "train.jsonl").read_text().splitlines() if line.strip())
    return [row["text"] for row in rows]


def build_tokenizer(texts: list[str], out: Path, vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(out)
    return tokenizer


def packed_blocks(tokenizer, texts: list[str], block: int) -> list[list[int]]:
    """Texts joined by end-of-text tokens and cut into ``block``-token rows."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(texts), 2000):
        for row in tokenizer(texts[start:start + 2000])["input_ids"]:
            ids += row + [eos]
    return [ids[i:i + block] for i in range(0, len(ids) - block, block)]


def main() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/work/cache/tiny-gpt2"))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)

    texts = wordnet_sentences() + clinc_train_texts()
    random.shuffle(texts)
    held_out, texts = texts[:2000], texts[2000:]
    tokenizer = build_tokenizer(texts, args.out, args.vocab)
    blocks, held = packed_blocks(tokenizer, texts, args.block), packed_blocks(tokenizer, held_out, args.block)
    print(f"{len(texts)} sentences, {len(blocks)} training blocks of {args.block} tokens", file=sys.stderr)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=args.width, n_layer=args.layers,
                        n_head=max(1, args.width // 64), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    data = torch.tensor(blocks)
    started = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        rows = data[torch.randint(len(data), (args.batch,))]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 200 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} {time.perf_counter() - started:.0f}s", file=sys.stderr)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.inference_mode():
        held_rows = torch.tensor(held)
        losses = [model(input_ids=held_rows[i:i + 64], labels=held_rows[i:i + 64]).loss.item() for i in range(0, len(held_rows), 64)]
    perplexity = math.exp(sum(losses) / len(losses))
    model.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    (args.out / "README.txt").write_text(
        f"A {args.layers}-layer, {args.width}-wide GPT-2 ({params / 1e6:.1f} M parameters, {len(tokenizer)}-piece byte-level BPE)\n"
        f"pretrained from scratch by `python -m bench.tiny_lm {' '.join(sys.argv[1:])}` on WordNet 3.0 glosses and examples\n"
        f"plus CLINC150's training utterances (no val/test rows, no intent labels): {len(texts)} sentences.\n"
        f"{args.steps} steps of {args.batch} x {args.block} tokens in {seconds:.0f} s on {args.threads} CPU threads"
        f" (${seconds / 3600:.4f} at $1.00/h).\nHeld-out perplexity (2,000 sentences): {perplexity:.1f}.\n"
    )
    print((args.out / "README.txt").read_text())


if __name__ == "__main__":
    main()
