"""Where the GSM8K SPCT experiment stands, stage by stage, from its files (read only: safe while
any stage runs). ``run.sh status`` calls it.

    python results/spct_gsm8k/status.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grm_plugin.draw_log import partial_path
from grm_plugin.spct._train import checkpoints_path
from grm_plugin.spct.progress import read_finished_lines

HERE = Path(__file__).resolve().parent
STAGES = ("base", "rft", "rl")
DEMO_STAGES = ("base_grammar", "rft_grammar", "rl_grammar")  # preference only (run.sh says why)


def _lines(path: Path) -> list[dict]:
    return read_finished_lines(path, json.loads)


def _count(path: Path) -> int:
    return len(_lines(path))


def _trained(folder: Path) -> str:
    if (folder / "spct_train.json").is_file():
        report = json.loads((folder / "spct_train.json").read_text())
        return f"done, {report.get('steps', '?')} steps"
    checkpoints = sorted(
        int(p.name.removeprefix("checkpoint-"))
        for p in checkpoints_path(folder).glob("checkpoint-*")
    )
    return f"checkpoint at step {checkpoints[-1]}" if checkpoints else "not started"


def status(root: Path = HERE) -> list[str]:
    """One line per stage (shard, for eval)."""
    out = []
    problems = _count(root / "data" / "problems.jsonl")
    made = _lines(root / "train.progress.jsonl")
    pairs = _count(root / "train.jsonl")
    out.append(f"make-pairs: {len(made)} of {problems} problems, {pairs} items")
    judged = _lines(root / "rft.progress.jsonl")
    records = _count(root / "rft.jsonl")
    samples = sum(o.get("samples", 0) for o in judged)
    out.append(
        f"collect: {len(judged)} of {pairs} items, {records} records kept of {samples} judgments"
    )
    out.append(f"sft: {_trained(root / 'models' / 'judge-rft')}")
    out.append(f"rl: {_trained(root / 'models' / 'judge-rl')}")
    adapter = root / "adapter" / "SHA256SUMS"
    out.append(f"adapter: {adapter.read_text().split()[0] if adapter.is_file() else 'not yet'}")
    shards = [s for s in sorted((root / "data").glob("*.jsonl")) if s.name != "problems.jsonl"]
    runs = [(stage, shard) for stage in STAGES for shard in shards]
    runs += [(stage, root / "data" / "preference.jsonl") for stage in DEMO_STAGES]
    for stage, shard in runs:
        run = root / "eval" / stage / shard.stem
        if (run / "report.json").is_file():
            state = "done"
        else:
            # grm-plugin eval keeps the draw in progress in its partial file
            items = {
                s["item"]["id"]
                for path in (run / "samples.jsonl", partial_path(run, "samples"))
                for s in _lines(path)
            }
            state = f"{len(items)} of {_count(shard)} items" if items else "not started"
        out.append(f"eval-{stage} {shard.stem}: {state}")
    return out


if __name__ == "__main__":
    print("\n".join(status(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)))
