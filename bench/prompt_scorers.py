"""The prompt loop's two scorers side by side on CLINC150 test: MiniLM embeddings and a small causal LM.

The causal LM is scored twice from one pass: the raw log-likelihood of each label's words after the
input and the template, and the same with contextual calibration (Zhao et al. 2021: minus each
label's likelihood after a content-free input). Nothing is selected here: each template given is a
fixed configuration, scored once on the whole test split (4,500 queries, 150 intents). Intervals
are 1,000-round paired bootstrap intervals over test queries.

This machine reaches no hub, so the causal LM is one pretrained here by ``bench/tiny_lm.py`` (its
README.txt says how, and on what); online, pass a hub id such as ``gpt2`` to ``--lm``.

    python -m bench.tiny_lm --steps 1500 --threads 1 --layers 2 --width 128 --vocab 4000 --batch 16 --block 48
    python -m bench.prompt_scorers [--lm /work/cache/tiny-gpt2] [--rows 300 --no-write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

RESULTS = REPO / "bench" / "results" / "prompt_scorers.json"
TEMPLATES = ("a request about {label}", "The intent of this query is {label}")
PRICE_PER_HOUR = 1.00


def measure(lm_ref: str, templates: tuple[str, ...], rows: int) -> dict:
    import numpy as np
    import torch

    from worker.ml.data import load_dataset
    from worker.ml.evaluate import accuracy, paired_bootstrap
    from worker.initiatives.prompt_loop.search import CausalLM, CausalLMScorer, EmbeddingScorer

    torch.set_num_threads(1)
    dataset = load_dataset("clinc150", variant="full")
    texts, gold = dataset.test.texts, np.array(dataset.label_ids(dataset.test))
    if rows:
        texts, gold = texts[::len(texts) // rows][:rows], gold[::len(gold) // rows][:rows]
    embedding = EmbeddingScorer("", dataset.labels)
    causal = CausalLMScorer(CausalLM(lm_ref), dataset.labels)
    out = {"lm": lm_ref, "lm_readme": _readme(lm_ref), "rows": len(texts), "templates": []}
    for template in templates:
        started = time.perf_counter()
        by_embedding = np.array(embedding.predict(template, texts))
        embedding_seconds, started = time.perf_counter() - started, time.perf_counter()
        raw = causal.scores(template, texts, calibrated=False)
        by_raw, by_calibrated = raw.argmax(1).numpy(), (raw - causal.prior(template)).argmax(1).numpy()
        causal_seconds = time.perf_counter() - started

        def gap(a, b):  # points, b minus a, with its paired interval
            low, high = paired_bootstrap(accuracy, gold, a, b)
            return [100 * (accuracy(gold, b) - accuracy(gold, a)), 100 * low, 100 * high]

        out["templates"].append({
            "template": template, "embedding": accuracy(gold, by_embedding), "causal_raw": accuracy(gold, by_raw),
            "causal_calibrated": accuracy(gold, by_calibrated), "calibration_gain": gap(by_raw, by_calibrated),
            "causal_minus_embedding": gap(by_embedding, by_calibrated),
            "distinct_predictions": {"causal_raw": len(set(by_raw.tolist())), "causal_calibrated": len(set(by_calibrated.tolist()))},
            "seconds": {"embedding": embedding_seconds, "causal": causal_seconds}})
        print(json.dumps(out["templates"][-1]), file=sys.stderr, flush=True)
    return out


def _readme(lm_ref: str) -> str:
    path = Path(lm_ref) / "README.txt"
    return path.read_text().strip() if path.is_file() else f"`{lm_ref}` from the hub"


def report(result: dict) -> str:
    lines = [
        f"CLINC150 `full` test split ({result['rows']:,} queries, 150 intents, chance 0.67%), zero-shot, one pass per "
        "template and scorer, no selection (so no validation split is involved and test is read once per "
        "configuration). Embedding: MiniLM-L6, cosine similarity to each rendered label. Causal LM: the calibrated "
        "log-likelihood of each label's words after the query and the template's text before `{label}`, raw and with "
        "contextual calibration (content-free input `N/A`), from one scoring pass; each query's context runs once and "
        "its key/value cache is shared by the 150 label continuations. 1 torch thread on a shared 2-core CPU. "
        "Re-run: `python -m bench.prompt_scorers`.",
        "",
        "The causal LM: " + " ".join(result["lm_readme"].split()),
        "",
        "| template | embedding acc | causal LM raw acc | causal LM calibrated acc | calibration gain, points [95% CI] | "
        "calibrated causal LM minus embedding, points [95% CI] | labels predicted (raw / calibrated) | wall: embedding / causal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in result["templates"]:
        cal, vs = t["calibration_gain"], t["causal_minus_embedding"]
        lines.append(
            f"| `{t['template']}` | {100 * t['embedding']:.2f}% | {100 * t['causal_raw']:.2f}% | {100 * t['causal_calibrated']:.2f}% | "
            f"{cal[0]:+.2f} [{cal[1]:+.2f}, {cal[2]:+.2f}] | {vs[0]:+.2f} [{vs[1]:+.2f}, {vs[2]:+.2f}] | "
            f"{t['distinct_predictions']['causal_raw']} / {t['distinct_predictions']['causal_calibrated']} | "
            f"{t['seconds']['embedding']:.0f} s / {t['seconds']['causal']:.0f} s |")
    causal_seconds = sum(t["seconds"]["causal"] for t in result["templates"])
    lines += [
        "",
        f"Causal-LM scoring cost {causal_seconds:.0f} s (${causal_seconds / 3600 * PRICE_PER_HOUR:.4f} at "
        f"${PRICE_PER_HOUR:.2f}/h) for {len(result['templates'])} templates over the test split.",
        "",
        _reading(result),
    ]
    return "\n".join(lines)


def _reading(result: dict) -> str:
    best = max(result["templates"], key=lambda t: t["causal_calibrated"])
    gains = [t["calibration_gain"] for t in result["templates"]]
    calibration = ("Calibration's gain is above 0 for every template" if all(g[1] > 0 for g in gains) else
                   "Calibration's gain has an interval above 0 for no template" if all(g[1] <= 0 for g in gains) else
                   "Calibration's gain is above 0 for some templates only")
    weak = best["causal_calibrated"] < 5 / 150
    return ("Reading: " + (f"the causal LM stays near chance (best {100 * best['causal_calibrated']:.2f}%, chance 0.67%): "
                           "a model this small, pretrained here in minutes, cannot name 150 intents zero-shot, so this "
                           "measures the scorer's machinery and what calibration does to a weak LM's label prior, not what "
                           "GPT-2 or larger would reach. " if weak else "")
            + f"{calibration}; the embedding scorer is ahead of the calibrated causal LM by "
            f"{-best['causal_minus_embedding'][0]:.1f} points on the best template, and is the scorer the prompt loop's "
            "figures above use.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="/work/cache/tiny-gpt2", help="a causal LM folder or hub id")
    parser.add_argument("--rows", type=int, default=0, help="an evenly spaced part of test, for a smoke run (0: all)")
    parser.add_argument("--no-write", action="store_true", help="print, keep nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from the kept result")
    args = parser.parse_args()
    if args.report_only:
        result = json.loads(RESULTS.read_text())
    else:
        result = measure(args.lm, TEMPLATES, args.rows)
    body = report(result)
    print(body)
    if not args.no_write and not args.rows:
        from bench.common import write_section

        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1))
        write_section("Prompt scorers: embedding vs causal LM", body)


if __name__ == "__main__":
    main()
