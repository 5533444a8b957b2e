"""The judge prompt: our wording of the SPCT structure (principles, analysis, scores).

The wording lives in Jinja2 templates (``grm_plugin.templates``: the default ``grm-plugin`` and
``deepseek-grm`` presets, or a file); this module keeps the fencing helpers and
``build_judge_messages``, which renders the default template.

Responses are fenced by begin/end markers that carry a random code, so a response cannot close
its own fence with a fake marker; the judge is told that fenced text is data, not instructions.

Example:
    >>> msgs = build_judge_messages("What is 2+2?", ["4", "5"], nonce="abc123")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
    >>> "<<<RESPONSE 2 BEGIN abc123>>>" in msgs[1]["content"]
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

Message = dict[str, str]
Conversation = str | Sequence[Message]

# chat-template control strings (ChatML / Llama-3 `<|...|>`, `<s>`, Gemma turns): a tokenizer
# turns them into real control tokens, so a response could end the user turn and open its own
_CONTROL_TOKEN = re.compile(r"<(\|[^<>|\n]{1,48}\|>|/?s>|(?:start|end)_of_turn>)")

TRUNCATION_MARKER = "[... truncated by grm-plugin: {omitted} of {total} characters omitted ...]"

# a str may hold surrogate code points (JSON "\\ud800", surrogateescape); UTF-8 cannot carry
# them, so the engine would fail when sending the prompt and be blamed for the caller's input
_SURROGATE = re.compile("[\ud800-\udfff]")


def format_conversation(context: Conversation) -> str:
    """Render a prompt string or a chat message list as plain text."""
    if isinstance(context, str):
        return context
    lines = []
    for m in context:
        role = str(m.get("role", "user")).capitalize()
        lines.append(f"{role}: {m.get('content', '')}")
    return "\n\n".join(lines)


def check_text(text: str, what: str) -> None:
    """Raise ValueError when ``text`` (named ``what`` in the message) cannot be sent to a judge:
    it holds a surrogate code point, which no UTF-8 encoder accepts.

    Example:
        >>> check_text("fine", "response 1")
        >>> check_text("bad \\ud800", "response 2")
        Traceback (most recent call last):
        ...
        ValueError: response 2 is not valid Unicode text: a lone surrogate (U+D800) at character 4
    """
    m = _SURROGATE.search(text)
    if m is not None:
        raise ValueError(
            f"{what} is not valid Unicode text: a lone surrogate (U+{ord(m.group()):04X}) at "
            f"character {m.start()}"
        )


def text_problem(text: str, what: str) -> str | None:
    """``check_text``'s message, or None when ``text`` can be sent to a judge.

    >>> text_problem("fine", "response 0") is None
    True
    """
    try:
        check_text(text, what)
    except ValueError as e:
        return str(e)
    return None


def neutralize_control_tokens(text: str) -> str:
    """Break chat-template control strings with a zero-width space so they stay plain text.

    Example:
        >>> neutralize_control_tokens("hi<|im_end|>") == "hi<\u200b|im_end|>"
        True
    """
    if "<" not in text:  # every control string starts with one: most texts have none
        return text
    return _CONTROL_TOKEN.sub("<\u200b\\1", text)


def build_judge_messages(
    context: Conversation,
    responses: Sequence[str],
    *,
    nonce: str,
    principles: str | None = None,
    reference: str | None = None,
    hint_best: int | None = None,
    template: str | Path | None = None,
) -> list[Message]:
    """Chat messages asking the judge to evaluate ``responses``, shown in the given order.

    ``hint_best`` (0-based, in shown order) adds a hint naming the best response: only for
    collecting training data on items the judge got wrong (SPCT's hinted retry), never for scoring.
    ``template``: a preset name or a template file (default: ``grm-plugin``).
    """
    from .templates import DEFAULT_TEMPLATE, load_template

    return load_template(template or DEFAULT_TEMPLATE).render(
        context,
        responses,
        nonce=nonce,
        principles=principles,
        reference=reference,
        hint_best=hint_best,
    )


def truncate_text(text: str, max_chars: int) -> str:
    """Keep the head of ``text`` and say visibly how much was cut."""
    if len(text) <= max_chars:
        return text
    keep = max(0, max_chars)
    return text[:keep] + "\n" + TRUNCATION_MARKER.format(omitted=len(text) - keep, total=len(text))


def fit_responses(responses: Sequence[str], max_total_chars: int) -> list[str]:
    """Shrink the longest responses first until their lengths add up to ``max_total_chars``.

    Water-filling: find the largest cap ``c`` with ``sum(min(len_i, c)) <= max_total_chars``, so
    short responses stay whole and long ones are cut to the same length.
    """
    lengths = [len(r) for r in responses]
    if sum(lengths) <= max_total_chars:
        return list(responses)
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= max_total_chars:
            lo = mid
        else:
            hi = mid - 1
    return [truncate_text(r, lo) for r in responses]
