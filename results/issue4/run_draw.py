"""Issue 4 real run, step 1: draw k judgments per item with the embedded default judge, in small
chunks, appending each chunk to samples.jsonl so that a run cut short still leaves usable data.

Usage: python results/issue4/run_draw.py OUT_DIR N_ITEMS K [MAX_CHARS] [SERVER_URL]
"""

import json
import random
import sys
import time
from pathlib import Path

from grm_plugin import GenerativeRewardFn
from grm_plugin.evaluation import ItemDraw
from grm_plugin.items import load_preference_items

out, n_items, k = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
max_chars = int(sys.argv[4]) if len(sys.argv) > 4 else 1200
server = sys.argv[5] if len(sys.argv) > 5 else None
out.mkdir(parents=True, exist_ok=True)
items = load_preference_items("/work/shared/data/preference_dev.jsonl")
# short items only: prefill dominates on this CPU; a seeded shuffle, then balance best=0/best=1
short = [it for it in items if len(it.prompt) + sum(map(len, it.responses)) <= max_chars]
random.Random(0).shuffle(short)
first = [it for it in short if it.best == 0][: (n_items + 1) // 2]
second = [it for it in short if it.best == 1][: n_items // 2]
chosen = [x for pair in zip(first, second, strict=False) for x in pair] + first[len(second) :]
chosen = chosen[:n_items]
samples_file = out / "samples.jsonl"
done = set()
if samples_file.exists():
    done = {json.loads(line)["item"]["id"] for line in samples_file.open()}
todo = [it for it in chosen if it.id not in done]
engine = server
rm = GenerativeRewardFn(
    engine, samples=k, temperature=0.5, max_new_tokens=384, seed=0, parse_retries=0
)
chunk = 2  # 2 items x k=4 = 8 rows = one batch of the transformers engine
t0 = time.time()
for start in range(0, len(todo), chunk):
    part = todo[start : start + chunk]
    results = rm.score_batch([it.prompt for it in part], [it.responses for it in part])
    with samples_file.open("a") as f:
        for it, res in zip(part, results, strict=True):
            f.write(ItemDraw(item=it, result=res).model_dump_json() + "\n")
    n_done = len(done) + start + len(part)
    print(f"{time.time() - t0:.0f}s: {n_done}/{len(chosen)} items", flush=True)
(out / "draw_meta.json").write_text(
    json.dumps(
        {
            "items": [it.id for it in chosen],
            "k": k,
            "max_chars": max_chars,
            "server": server,
            "max_new_tokens": 384,
            "temperature": 0.5,
            "seconds_this_run": time.time() - t0,
        }
    )
)
