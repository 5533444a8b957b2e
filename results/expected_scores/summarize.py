"""How the expected scores of the draw in eval/samples.jsonl relate to the parsed ones."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from grm_plugin.evaluation import read_draws

here = Path(__file__).parent
draws = read_draws(here / "eval" / "samples.jsonl")
valid = [s for d in draws for s in d.result.samples if s.scores is not None]
positions = [(s.scores[i], e) for s in valid for i, e in enumerate(s.expected_scores or [])]
measured = [(p, e) for p, e in positions if e is not None]
tied_samples = [s for s in valid if len(set(s.scores)) < len(s.scores)]
broken = [s for s in tied_samples if len(set(s.vote_scores())) == len(s.scores)]
out = [
    f"valid samples: {len(valid)}; score positions: {len(positions)}, "
    f"expected score measured at {len(measured)}",
    f"mean |expected - parsed|: {statistics.mean(abs(e - p) for p, e in measured):.2f}"
    if measured
    else "no expected scores",
    f"samples whose parsed scores tie: {len(tied_samples)}; "
    f"of them untied by expected scores: {len(broken)}",
]
print("\n".join(out))
(here / "summary.txt").write_text("\n".join(out) + "\n")
sys.exit(0)
