"""Prefill and decode speed of the embedded judge's weights as float32, bfloat16 and dynamic
int8 (Linear layers), side by side in one process, two rounds, on the README's France prompt.

    python benchmarks/cpu_weights.py

Greedy; 1 new token for the prefill time, then 33 (the decode time is the difference).
"""

from __future__ import annotations

import os
import time
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm_plugin.default_judge import default_judge_path
from grm_plugin.engines.transformers_engine import convert_gguf
from grm_plugin.prompt import build_judge_messages


def main() -> None:
    folder = convert_gguf(default_judge_path())
    tok = AutoTokenizer.from_pretrained(folder)
    msgs = build_judge_messages(
        "What is the capital of France?",
        ["The capital of France is Paris.", "The capital of France is Berlin."],
        nonce="ab12cd34",
    )
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    models = {
        "float32": AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
        "bfloat16": AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval(),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models["int8"] = torch.ao.quantization.quantize_dynamic(
            AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            {torch.nn.Linear},
            dtype=torch.qint8,
        )
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    print(f"prompt tokens {enc['input_ids'].shape[1]}")
    for rnd in range(2):
        for name, model in models.items():
            with torch.inference_mode():
                t = time.time()
                model.generate(**enc, max_new_tokens=1, **greedy)
                pre = time.time() - t
                t = time.time()
                out = model.generate(**enc, max_new_tokens=33, **greedy)
                dt = time.time() - t - pre
            new = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            print(
                f"round {rnd + 1} {name}: prefill {pre:.1f}s, 32 decode tokens {dt:.1f}s = "
                f"{32 / dt:.2f} tok/s, load {os.getloadavg()[0]:.1f}; {new[:80]!r}",
                flush=True,
            )


if __name__ == "__main__":
    main()
