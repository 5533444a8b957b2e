"""Rate of `spct make-pairs` on this CPU: model load and sampling timed apart (PLAN.md).

What `grm-plugin spct make-pairs PROBLEMS --out OUT --config spct.yaml` does with --model omitted
(the embedded 0.5B model as the policy), with the load and the sampling timed separately, and
the tokens of each solution counted.

    python results/spct_gsm8k/measure_make_pairs.py --problems 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from grm_plugin.engines import make_engine
from grm_plugin.spct.config import SPCTConfig
from grm_plugin.spct.make_pairs import make_pairs, read_problems

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--problems", type=int, default=3)
    p.add_argument("--out-dir", default=str(HERE / "measure"))
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spct = SPCTConfig.load(HERE / "spct.yaml")
    settings = spct.make_pairs
    problems, _ = read_problems(HERE / "data" / "problems.jsonl", settings, limit=args.problems)
    t0 = time.perf_counter()
    engine = make_engine(settings.engine or spct.judge.engine)
    t1 = time.perf_counter()
    out = out_dir / f"pairs{args.problems}.jsonl"
    for f in out_dir.glob(f"pairs{args.problems}.*"):
        f.unlink()  # a fresh measurement, not a resume
    counts = make_pairs(problems, out, settings, engine, progress=False)
    t2 = time.perf_counter()
    tok = engine.tokenizer  # type: ignore[attr-defined]
    lengths = []
    for line in out.read_text().splitlines():
        item = json.loads(line)
        lengths += [len(tok(r, add_special_tokens=False)["input_ids"]) for r in item["responses"]]
    result = {
        "problems": len(problems),
        "solutions": counts.samples,
        "load_s": round(t1 - t0, 1),
        "sampling_s": round(t2 - t1, 1),
        "s_per_problem": round((t2 - t1) / max(1, len(problems)), 1),
        "s_per_solution": round((t2 - t1) / max(1, counts.samples), 1),
        "tokens_of_paired_solutions": lengths,
        "counts": json.loads(counts.model_dump_json()),
        "settings": {k: getattr(settings, k) for k in ("samples", "temperature", "max_new_tokens")},
    }
    (out_dir / "make_pairs_rate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
