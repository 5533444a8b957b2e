"""Load time, time per judgment and parse success rate of the embedded default judge on this
machine, over the first N items of a preference JSONL file.

    python benchmarks/default_judge.py ../shared/data/preference_dev.jsonl --items 20 \
        --out benchmarks/results/default_judge.json

Parse success is measured with parse_retries=0 (the raw rate of the judge); k=1, greedy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from grm_plugin import GenerativeRewardFn
from grm_plugin.engines.transformers_engine import converted_gguf_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from grm_plugin.default_judge import default_judge_path

    t = time.perf_counter()
    gguf = default_judge_path()
    assemble_s = time.perf_counter() - t
    was_cached = (converted_gguf_dir(gguf) / "config.json").exists()
    t = time.perf_counter()
    rm = GenerativeRewardFn(None, samples=1, max_new_tokens=args.max_new_tokens, parse_retries=0)
    load_s = time.perf_counter() - t

    items = [json.loads(line) for line in args.data.open()][: args.items]
    t = time.perf_counter()
    single = rm.score(items[0]["prompt"], items[0]["responses"])
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    results = rm.score_batch(
        [i["prompt"] for i in items], [i["responses"] for i in items], progress=True
    )
    batch_s = time.perf_counter() - t

    parsed = sum(1 for r in results if not r.failed)
    correct = sum(
        1
        for r, it in zip(results, items, strict=True)
        if not r.failed
        and r.scores[it["best"]] > max(s for j, s in enumerate(r.scores) if j != it["best"])
    )
    failures: dict[str, int] = {}
    for r in results:
        for s in r.samples:
            if s.failure:
                failures[s.failure] = failures.get(s.failure, 0) + 1
    out = {
        "judge": "Qwen2.5-Coder-0.5B-Instruct Q4_K_M via transformers (fp32, CPU)",
        "assemble_seconds": round(assemble_s, 2),
        "load_seconds": round(load_s, 2),
        "load_was_cached": was_cached,
        "single_judgment_seconds": round(single_s, 2),
        "single_parsed": not single.failed,
        "items": len(items),
        "batch_seconds": round(batch_s, 2),
        "seconds_per_judgment_batched": round(batch_s / len(items), 2),
        "parse_success": parsed,
        "parse_success_rate": round(parsed / len(items), 3),
        "strictly_correct": correct,
        "failures": failures,
        "max_new_tokens": args.max_new_tokens,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        samples = [
            {
                "id": it["id"],
                "best": it["best"],
                "scores": r.scores,
                "text": r.samples[0].text if r.samples else None,
            }
            for it, r in zip(items, results, strict=True)
        ]
        args.out.with_suffix(".samples.jsonl").write_text(
            "".join(json.dumps(s) + "\n" for s in samples)
        )


if __name__ == "__main__":
    main()
