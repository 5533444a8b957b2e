"""Result models: what the judge thought, sample by sample, and the final scores."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field, model_validator


class FailureKind(str, Enum):
    """Why a sample or an item got no score. Adapters count and log these by value, so the
    names are part of every framework's log keys (``grm_failed_<kind>``)."""

    #: the engine raised or answered garbage (server down, bad body, non-text content)
    ENGINE = "engine"
    #: a deadline (request, item or batch) passed before the judgment came back
    TIMEOUT = "timeout"
    #: the judge wrote text but no valid score list for this many responses
    PARSE = "parse"
    #: the response was empty, so it was not judged
    EMPTY = "empty"
    #: the caller's input was malformed (wrong types, no responses)
    BAD_INPUT = "bad_input"


class ResponseFlag(str, Enum):
    """Why one response of an item was treated specially (``JudgmentResult.flags`` holds the
    values: adapters log them by name)."""

    #: the response was empty: the empty-response policy applied, not judged
    EMPTY_RESPONSE = "empty_response"
    #: the response had no content token (``grm_plugin.content``; ``JudgeConfig.minimal_content``):
    #: the empty-response policy applied, not judged
    MINIMAL_CONTENT = "minimal_content"
    #: the response holds text no judge request can carry (a lone surrogate): not judged, a
    #: bad-input failure of that response only (the others of its group are judged)
    INVALID_TEXT = "invalid_text"
    #: the response was cut to fit the judge's context
    TRUNCATED = "truncated"
    #: the batch deadline passed before the item was judged
    TIMEOUT = "timeout"
    #: an identical response of the same item was judged instead (``grm_plugin.cache``)
    DUPLICATE = "duplicate"
    #: the judgment came from the judgment cache (``grm_plugin.cache``)
    CACHED = "cached"
    #: fewer samples than asked for gave scores (engine errors, timeouts, unparsed texts that
    #: retries did not recover): the scores stand on fewer votes; never cached
    DEGRADED = "degraded"


class Sample(BaseModel):
    """One sampled judgment. Scores are mapped back to the original response order."""

    text: str | None = Field(None, description="the judge's raw output; None if the engine failed")
    principles: str = ""
    critique: str = ""
    scores: list[float] | None = Field(None, description="parsed scores, original order")
    order: list[int] = Field(
        default_factory=list, description="order[j] = original index of the response shown j-th"
    )
    score_starts: list[int] | None = Field(
        None, description="character index of each score in text (shown order)"
    )
    expected_scores: list[float | None] | None = Field(
        None,
        description="per response (original order): the expected score under the judge's "
        "distribution at its score position; None where not measured (the parsed score votes)",
    )
    meta_score: float | None = None
    voted: bool = False
    attempt: int = Field(0, description="0 for the first round, >0 for parse retries")
    constrained: bool = Field(
        False,
        description="the scores were written under the score-list grammar (the engine's "
        "constrain_scores), after the judge's own text gave none that parsed",
    )
    dropped_line: str | None = Field(
        None,
        description="with constrained: the judge's own score line that did not parse, left "
        "out of text (the critique before it is kept)",
    )
    failure: str | None = Field(None, description="why this sample gave no scores (message)")
    failure_kind: FailureKind | None = Field(None, description="the kind of that failure")
    messages: list[dict[str, str]] | None = Field(
        None,
        exclude=True,
        description="the chat messages the judge got for this sample (in memory only, never "
        "saved: SPCT's rejective fine-tuning trains on them)",
    )

    def vote_scores(self) -> list[float] | None:
        """The scores this sample votes with: expected scores where measured, else parsed.

        >>> Sample(scores=[7.0, 7.0], expected_scores=[6.6, None]).vote_scores()
        [6.6, 7.0]
        """
        if self.scores is None:
            return None
        if self.expected_scores is None:
            return list(self.scores)
        return [
            e if e is not None else s
            for s, e in zip(self.scores, self.expected_scores, strict=True)
        ]

    @model_validator(mode="after")
    def _kind_of_saved_failure(self) -> Sample:
        # draws saved before failure kinds existed carry only "parse: ..." / "engine: ..."
        if self.failure and self.failure_kind is None:
            prefix = self.failure.split(":", 1)[0]
            self.failure_kind = next((k for k in FailureKind if k.value == prefix), None)
        return self


class JudgmentResult(BaseModel):
    """Final scores for one item (a prompt and its responses)."""

    scores: list[float | None] = Field(
        default_factory=list, description="mean over voting samples, per response; None = no score"
    )
    score_sums: list[float | None] = Field(
        default_factory=list, description="sum over voting samples (the paper's voting score)"
    )
    num_valid: int = Field(0, description="samples that parsed")
    num_voted: int = Field(0, description="samples that voted (after the meta RM filter)")
    votes: int = Field(
        0,
        description="samples the judge votes with when all parse (k, or the meta RM's keep); "
        "what the voting-sum scale of a response without votes (failed, empty) is measured in; "
        "0 = not known",
    )
    samples: list[Sample] = Field(default_factory=list)
    failed: bool = Field(False, description="True when no response got a score")
    error: str | None = None
    failure_kind: FailureKind | None = Field(
        None,
        description="when failed: the kind of the failure (the samples' kinds, if mixed, "
        "in the order timeout, engine, parse)",
    )
    flags: list[list[str]] = Field(
        default_factory=list, description="per response: e.g. 'empty_response', 'truncated'"
    )

    @property
    def principles(self) -> str:
        """Principles of the first voting sample (for display and logs)."""
        for s in self.samples:
            if s.voted:
                return s.principles
        return ""
