"""The minimal-content rule: is a response empty of content, though not of characters?

"Master key" responses (":", ".", "Thought process:", "Let's solve this problem step by step.",
"Solution", "解") fool many generative judges (Zhao et al., "One Token to Fool LLM-as-a-Judge").
With ``JudgeConfig.minimal_content`` on, such a response gets the empty-response policy instead
of a judgment, flagged ``minimal_content``.

Definition (precise, so it can be argued with): a response is *minimal* when, after

1. Unicode NFKC normalization and lower-casing,
2. splitting into word tokens (runs of letters and digits, with an inner apostrophe kept:
   ``let's`` is one token; underscores and punctuation separate tokens),

every token is a *filler* token: a word of ``FILLER_WORDS`` (opener and function words in
English, Chinese, Japanese, German, French, Spanish, Russian and Portuguese), or a token written
in CJK script that is made entirely of ``FILLER_PHRASES_CJK``. A response with no token at all
(only punctuation, symbols, whitespace) is minimal too. Any digit, any single letter (a
multiple-choice answer such as "B") and any other word is content, so "4", "B", "Paris" and
"No." are never minimal.

Example:
    >>> [is_minimal(r) for r in [":", "Thought process:", "Let's solve this problem step by step."]]
    [True, True, True]
    >>> [is_minimal(r) for r in ["4", "B", "Paris", "No.", "The answer is 12."]]
    [False, False, False, False, False]
    >>> is_minimal("解题过程：")
    True
"""

from __future__ import annotations

import re
import unicodedata

#: opener and function words with no content on their own (lower case, NFKC)
FILLER_WORDS: frozenset[str] = frozenset(
    # English: openers, the words of "let's solve this problem step by step", function words
    """
    thought thoughts process thinking think reasoning reason solution solutions solve solving
    answer answers response analysis step steps let's lets let us we will i'll we'll i'm
    by this that the problem question here is are be now first okay ok so well hmm alright
    sure carefully careful begin start start let's final result results explanation explain
    approach method work working through out to of and with it its it's let me my our
    """.split()
    # German, French, Spanish, Portuguese, Russian
    + """
    lösung antwort denkprozess gedankengang schritt für schritt lassen uns das problem lösen
    wir lösen schritt-für-schritt
    solution réponse processus de réflexion pensée étape par résolvons ce problème le la
    solución respuesta proceso pensamiento paso por resolvamos este problema el
    solução resposta processo raciocínio passo vamos resolver esse este problema o
    решение ответ ход мыслей рассуждение шаг за давайте решим эту задачу задача по шагам
    """.split()
)

#: CJK openers: CJK text has no spaces, so a token is minimal when it is made of these only
FILLER_PHRASES_CJK: tuple[str, ...] = tuple(
    sorted(
        """
        思考过程 解题过程 解题思路 解答 答案 解
        让我们一步一步地解决这个问题 让我们一步步解决这个问题
        一步一步 让我们 我们 解决 这个 问题 思路 分析 步骤 过程 首先 好的 嗯
        思考プロセス 解決策 解答 答え 解 ステップバイステップ 考えてみましょう 問題 解いてみましょう
        この を で 一歩ずつ
        풀이 해결책 답 단계별로 생각해 봅시다 문제
        """.split(),
        key=len,
        reverse=True,  # longest first, so a phrase is not eaten by its own prefix
    )
)

_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def content_tokens(text: str) -> list[str]:
    """The word tokens of ``text`` that are not filler (see the module doc).

    Example:
        >>> content_tokens("Let's solve this problem step by step. The answer is 12.")
        ['12']
    """
    norm = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    return [t for t in _TOKEN.findall(norm) if not _is_filler(t)]


def _is_filler(token: str) -> bool:
    if len(token) == 1 and not _CJK.match(token):
        return False  # a digit or a letter: "4", "B" are answers
    if token in FILLER_WORDS:
        return True
    if not _CJK.search(token):
        return False
    rest = token
    for phrase in FILLER_PHRASES_CJK:
        rest = rest.replace(phrase, "")
    return rest == ""


def is_minimal(text: str) -> bool:
    """True when ``text`` has no content token (only punctuation, openers and filler words)."""
    return not content_tokens(text)
