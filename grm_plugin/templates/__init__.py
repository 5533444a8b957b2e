"""Judge prompt templates: named, versioned Jinja2 files, chosen with ``template:`` in the config.

Presets (``TEMPLATES``): ``grm-plugin`` (default; scores as ``Final Scores: [[...]]``) and
``deepseek-grm`` (our wording of the DeepSeek-GRM paper's Appendix G structure; scores as
``\\boxed{s1, ...}``, for the released DeepSeek-GRM models). ``template:`` also takes a path to
your own ``.jinja`` file. A name may carry its version (``grm-plugin@1``); a wrong one is an error.

Placeholders a template gets (the first three are required; a template that does not use them
is refused when it is loaded):

- ``conversation``: the query / chat context, already fenced by begin/end markers with the code
  (control tokens neutralized).
- ``responses``: a list, in the order shown to the judge; each has ``index`` (1-based) and
  ``fenced`` (the response between ``<<<RESPONSE i BEGIN code>>>`` and ``<<<RESPONSE i END
  code>>>``, control tokens neutralized). The raw text is not offered: fencing is ours.
- ``score_slots``: ``<score of response 1>, <score of response 2>, ...`` for the scores line
  (the scores instruction: write it as ``[[{{ score_slots }}]]`` or ``\\boxed{...}``).
- ``n``: the number of responses; ``fence_code``: the per-item random code in the markers.
- ``rubric``: the user's principles/rubric, or None; ``reference``: the fenced reference answer,
  or None; ``hint``: the 1-based index of the best response for SPCT's hinted retry, or None.

``{% set system %}...{% endset %}`` at the top level makes a system message; the rest of the
rendered text is the user message. A template asking for ``\\boxed{...}`` scores declares it
with a comment, ``{# score_format: boxed #}`` (default ``final_scores``: ``Final Scores: [[...]]``;
see ``grm_plugin.parsing.ScoreFormat``): a judge that stops before its score line is continued
from the start of that line. Whatever the template, every response's fenced block must
appear in the rendered prompt unchanged (checked on every render).

Every text from the caller (conversation, responses, reference, rubric) has its chat control
strings neutralized before any template sees it. Templates render in Jinja2's
``SandboxedEnvironment``: a file reaching for Python internals (``__subclasses__``,
``__globals__``) is refused with a ``TemplateError`` when it is loaded (a sample item is rendered
then) or, for code only other data reaches, when it renders.

Example:
    >>> t = load_template("deepseek-grm")
    >>> msgs = t.render("What is 2+2?", ["4", "5"], nonce="abc123")
    >>> "\\\\boxed{<score of response 1>, <score of response 2>}" in msgs[-1]["content"]
    True
    >>> t.ref
    'deepseek-grm@1'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox

from ..parsing import ScoreFormat
from ..prompt import Conversation, Message, format_conversation, neutralize_control_tokens

#: placeholders every template must use
REQUIRED = ("conversation", "responses", "score_slots")
#: every placeholder a template may use
PLACEHOLDERS = frozenset({*REQUIRED, "n", "fence_code", "rubric", "reference", "hint", "system"})
DEFAULT_TEMPLATE = "grm-plugin"
# the declaration may stand in any top-level Jinja comment: ``{# score_format: boxed #}``
_SCORE_FORMAT = re.compile(r"\{#-?\s*score_format\s*:\s*([\w-]+)\s*-?#\}")
#: a frame skeleton's stand-ins for the placeholders that differ from item to item (private-use
#: code points: a rubric that holds one gets no skeleton); see ``JudgeTemplate.skeleton``
_STAND_INS = {
    "conversation": "\ue000C\ue001",
    "fence_code": "\ue000N\ue001",
    "reference": "\ue000R\ue001",
}
_STAND_IN = re.compile("\ue000([CNR]|[0-9]+)\ue001")
#: skeletons kept per template (one per response count, rubric and reference-or-not)
_MAX_SKELETONS = 256


def declared_score_format(source: str, origin: str = "template") -> ScoreFormat:
    """The score format a template's source declares in a ``{# score_format: NAME #}`` comment;
    ``final_scores`` when it declares none (templates written before the declaration existed).

    >>> declared_score_format("{# score_format: boxed #}\\nScores: \\\\boxed{...}").value
    'boxed'
    >>> declared_score_format("Final Scores: [[...]]").value
    'final_scores'
    """
    found = _SCORE_FORMAT.findall(source)
    if not found:
        return ScoreFormat.FINAL_SCORES
    if len(set(found)) > 1:
        raise TemplateError(f"{origin}: more than one score_format declared: {', '.join(found)}")
    try:
        return ScoreFormat(found[0])
    except ValueError:
        known = ", ".join(f.value for f in ScoreFormat)
        raise TemplateError(
            f"{origin}: unknown score_format {found[0]!r} (known: {known})"
        ) from None


class TemplateError(ValueError):
    """A judge template that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TemplatePreset:
    """A shipped template: name, version, file (package data) and what it is for."""

    name: str
    version: int
    file: str
    description: str


#: shipped presets, by name
TEMPLATES: dict[str, TemplatePreset] = {
    p.name: p
    for p in (
        TemplatePreset(
            "grm-plugin",
            1,
            "grm-plugin.jinja",
            "grm-plugin's own prompt: weighted principles, analysis, Final Scores: [[...]]",
        ),
        TemplatePreset(
            "deepseek-grm",
            1,
            "deepseek-grm.jinja",
            "our wording of DeepSeek-GRM's Appendix G structure; scores as \\boxed{s1, ...}",
        ),
    )
}


@dataclass(frozen=True)
class _Shown:
    index: int
    fenced: str


def _env() -> jinja2.Environment:
    # StrictUndefined: a misspelt placeholder fails loudly instead of rendering as ""; sandboxed:
    # a template file is code from wherever the config points, and must not reach Python
    # internals (``__subclasses__``, ``__globals__``: os.system)
    return jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )


def _data(text: str) -> str:
    """Text from the caller, as the judge's prompt carries it: control strings neutralized."""
    return neutralize_control_tokens(text)


def fence(kind: str, text: str, nonce: str, index: int | None = None) -> str:
    """``text`` between begin/end markers carrying ``nonce`` (``kind``: RESPONSE, ...)."""
    label = kind if index is None else f"{kind} {index}"
    return f"<<<{label} BEGIN {nonce}>>>\n{text}\n<<<{label} END {nonce}>>>"


def fenced_item(context: Conversation, reference: str | None, nonce: str) -> tuple[str, str | None]:
    """An item's conversation and reference (None: none) as every judge prompt carries them:
    fenced with the item's code, control strings neutralized.

    >>> fenced_item("Hi", None, "abcd1234")[0].splitlines()[1]
    'Hi'
    """
    # every text that reaches the prompt, whoever wrote it (earlier assistant turns, a
    # dataset's reference, a rubric), goes through _data: a control string in any of them
    # would end the judge's user turn as surely as one in a response
    conversation = fence("CONVERSATION", _data(format_conversation(context)), nonce)
    return conversation, fence("REFERENCE", _data(reference), nonce) if reference else None


#: a skeleton's slot numbers of the stand-ins (responses are 0 .. n-1): negative, so that
#: ``[*responses, reference, fence_code, conversation][slot]`` is each slot's text
_SLOT_OF = {"C": -1, "N": -2, "R": -3}


@dataclass(frozen=True)
class Skeleton:
    """A template's render with the texts that differ from item to item left open: per
    message, its role, its fixed texts and, between each two of them, a slot (``0`` .. ``n-1``:
    that response's text as its fence carries it; ``-1`` the fenced conversation, ``-2`` the
    fence code, ``-3`` the fenced reference). Rendered once per response count, rubric and
    reference-or-not; each item's prompt is then a join (``grm_plugin.sampler.PromptFrame``),
    no Jinja render and no search per item or order."""

    messages: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]

    @functools.cached_property
    def sizes(self) -> tuple[tuple[int, int, int, int], ...]:
        """Per message: the length of its fixed texts and how often it shows the conversation,
        the fence code and the reference (its length with the responses empty, per item, is
        then four products: the truncation's overhead, without a join)."""
        return tuple(
            (sum(map(len, texts)), slots.count(-1), slots.count(-2), slots.count(-3))
            for _, texts, slots in self.messages
        )

    def join(
        self, responses: Sequence[str], *, conversation: str, fence_code: str, reference: str
    ) -> list[Message]:
        """The messages with these texts in the slots (each as the prompt carries it)."""
        values = [*responses, reference, fence_code, conversation]
        out = []
        for role, texts, slots in self.messages:
            parts: list[str] = [""] * (2 * len(texts) - 1)
            parts[0::2] = texts
            parts[1::2] = [values[i] for i in slots]
            out.append({"role": role, "content": "".join(parts)})
        return out


class JudgeTemplate:
    """A loaded, checked template; ``render`` gives the chat messages for one judgment."""

    def __init__(self, source: str, *, name: str, version: int | None, origin: str) -> None:
        self.name = name
        self.version = version
        self.origin = origin
        #: the score line the template asks for; the score-line prefill opens it
        self.score_format = declared_score_format(source, origin)
        env = _env()
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{origin}:{e.lineno}: template syntax error: {e.message}") from e
        used = jinja2.meta.find_undeclared_variables(ast)
        missing = [p for p in REQUIRED if p not in used]
        if missing:
            what = (
                "the scores instruction (use {{ score_slots }} in the line that asks for the "
                "scores)"
                if missing[0] == "score_slots"
                else f"the required placeholder {{{{ {missing[0]} }}}}"
            )
            raise TemplateError(f"{origin}: template lacks {what}")
        unknown = sorted(used - PLACEHOLDERS)
        if unknown:
            raise TemplateError(
                f"{origin}: unknown placeholder {{{{ {unknown[0]} }}}} "
                f"(known: {', '.join(sorted(PLACEHOLDERS - {'system'}))})"
            )
        self.uses_hint = "hint" in used
        self._template = env.from_string(source)
        self._plain_slots = _only_shown_or_tested(ast, _STAND_INS)
        self._skeletons: dict[tuple[int, str | None, bool], Skeleton | None]
        self._skeletons = {}
        # one render with every optional part given, so that code the sandbox refuses fails at
        # load time (code only other data reaches is refused when that data comes, by render)
        try:
            self.render(
                "Q",
                ["A", "B"],
                nonce="0" * 8,
                principles="P",
                reference="R",
                hint_best=0 if self.uses_hint else None,
            )
        except jinja2.TemplateError as e:
            raise TemplateError(f"{origin}: the template fails on a sample item: {e}") from e

    @property
    def ref(self) -> str:
        """``name@version`` (or the file path for a user template), recorded in reports."""
        return self.name if self.version is None else f"{self.name}@{self.version}"

    def render(
        self,
        context: Conversation,
        responses: Sequence[str],
        *,
        nonce: str,
        principles: str | None = None,
        reference: str | None = None,
        hint_best: int | None = None,
    ) -> list[Message]:
        """Messages asking the judge to score ``responses`` (in the order shown).

        ``hint_best`` is 0-based in shown order (SPCT's hinted retry; never for scoring).
        """
        if hint_best is not None and not self.uses_hint:
            raise TemplateError(f"{self.origin}: a hint was asked for, but the template has no "
                                "{{ hint }} placeholder")  # fmt: skip
        conversation, fenced_reference = fenced_item(context, reference, nonce)
        return self._render(conversation, responses, nonce, principles, fenced_reference, hint_best)

    def skeleton(self, n: int, principles: str | None, has_reference: bool) -> Skeleton | None:
        """The render for ``n`` responses with every text that differs from item to item left
        open (see ``Skeleton``); None where joining it with an item's texts could differ from
        the real render (a template file: see ``_plain_slots``; a rubric holding a stand-in; a
        response shown other than once).

        >>> t = load_template("grm-plugin")
        >>> sk = t.skeleton(2, None, False)
        >>> sk.join(["It is 4.", "5"], conversation="C", fence_code="N", reference="") == [
        ...     {"role": m["role"], "content": m["content"]}
        ...     for m in t._render("C", ["It is 4.", "5"], "N", None, None, None)
        ... ]
        True
        """
        key = (n, principles, has_reference)
        if key in self._skeletons:
            return self._skeletons[key]
        skeleton = None
        if self._plain_slots and "\ue000" not in (principles or ""):
            at = _STAND_INS
            messages = self._render(
                at["conversation"],
                [f"\ue000{i}\ue001" for i in range(n)],
                at["fence_code"],
                principles,
                at["reference"] if has_reference else None,
                None,
            )
            split = [(m["role"], _STAND_IN.split(m["content"])) for m in messages]
            shown = sorted(int(p) for _, parts in split for p in parts[1::2] if p.isdigit())
            # each response exactly once, and no stand-in at either end of a message (its real
            # text's own spaces would be stripped by a render, and not by a join)
            if shown == list(range(n)) and all(parts[0] and parts[-1] for _, parts in split):
                skeleton = Skeleton(
                    tuple(
                        (
                            role,
                            tuple(parts[0::2]),
                            tuple(_SLOT_OF[p] if p in _SLOT_OF else int(p) for p in parts[1::2]),
                        )
                        for role, parts in split
                    )
                )
        if len(self._skeletons) >= _MAX_SKELETONS:
            self._skeletons.clear()
        self._skeletons[key] = skeleton
        return skeleton

    def _render(
        self,
        conversation: str,
        responses: Sequence[str],
        nonce: str,
        principles: str | None,
        reference: str | None,
        hint_best: int | None,
    ) -> list[Message]:
        """The render, from the fenced conversation and reference."""
        shown = [
            _Shown(i, fence("RESPONSE", _data(r), nonce, i))
            for i, r in enumerate(responses, start=1)
        ]
        values = {
            "conversation": conversation,
            "responses": shown,
            "score_slots": ", ".join(f"<score of response {s.index}>" for s in shown),
            "n": len(shown),
            "fence_code": nonce,
            "rubric": _data(principles.strip()) if principles else None,
            "reference": reference,
            "hint": None if hint_best is None else hint_best + 1,
        }
        try:
            module = self._template.make_module(values)
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"{self.origin}: unsafe template code refused: {e}") from e
        user = str(module).strip()
        for s in shown:
            if s.fenced not in user:
                raise TemplateError(
                    f"{self.origin}: response {s.index} is not in the rendered prompt as its "
                    "fenced block ({{ r.fenced }} for each of responses)"
                )
        system = getattr(module, "system", None)
        msgs: list[Message] = []
        if system is not None and str(system).strip():
            msgs.append({"role": "system", "content": str(system).strip()})
        msgs.append({"role": "user", "content": user})
        return msgs


def _only_shown_or_tested(ast: jinja2.nodes.Template, names: Sequence[str]) -> bool:
    """True when the template uses ``names`` only as ``{{ name }}`` (shown as they are) or as
    the whole test of an ``{% if name %}``: its text then depends on their values only there
    (and on whether they are set), so a render with stand-ins, the stand-ins replaced, is the
    render with the values."""
    uses = sum(1 for node in ast.find_all(jinja2.nodes.Name) if node.name in names)
    plain = 0
    for node in ast.find_all((jinja2.nodes.Output, jinja2.nodes.If)):
        parts = node.nodes if isinstance(node, jinja2.nodes.Output) else [node.test]
        plain += sum(1 for p in parts if isinstance(p, jinja2.nodes.Name) and p.name in names)
    return uses == plain


@functools.cache
def _load_preset(name: str) -> JudgeTemplate:
    preset = TEMPLATES[name]
    source = resources.files(__package__).joinpath(preset.file).read_text(encoding="utf-8")
    return JudgeTemplate(source, name=preset.name, version=preset.version, origin=preset.file)


def load_template(spec: str | Path | JudgeTemplate = DEFAULT_TEMPLATE) -> JudgeTemplate:
    """A preset by name (``grm-plugin``, ``deepseek-grm``, optionally ``@version``) or a
    Jinja2 file by path; checked now, so a broken template fails at load time."""
    if isinstance(spec, JudgeTemplate):
        return spec
    text = str(spec)
    name, _, version = text.partition("@")
    preset = TEMPLATES.get(name)
    if preset is not None:
        if version and version != str(preset.version):
            raise TemplateError(f"template {name!r} has version {preset.version}, not {version!r}")
        return _load_preset(preset.name)
    path = Path(text).expanduser()
    if not path.is_file():
        raise TemplateError(
            f"template {text!r} is neither a preset ({', '.join(TEMPLATES)}) nor a file"
        )
    return _load_file(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _load_file(path: str, mtime_ns: int) -> JudgeTemplate:
    # keyed by modification time: an edited file is read again, an unchanged one is not
    return JudgeTemplate(
        Path(path).read_text(encoding="utf-8"), name=path, version=None, origin=path
    )


def checked_template(spec: str | None) -> str:
    """``spec`` (default ``grm-plugin``) after loading it once, so that a broken template fails
    when the reward is built, not at the first judgment. The spec (not the loaded template) is
    what a reward keeps: it pickles."""
    spec = spec or DEFAULT_TEMPLATE
    load_template(spec)
    return spec
