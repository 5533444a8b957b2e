"""SPCT: train a generative reward model (rejective fine-tuning, then rule-based online RL).

The recipe of DeepSeek-GRM (arXiv 2504.02495) on trl: ``collect`` samples judgments with the
production prompt, shuffling and parser and keeps the correct ones; ``sft`` fine-tunes the judge on
them; ``rl`` runs GRPO on the judge itself with the paper's +1/-1 rule reward. trl and peft are
imported only inside the training functions (``pip install 'grm-plugin[spct]'``).

Example:
    >>> from grm_plugin.spct import spct_rule_reward
    >>> spct_rule_reward(["p"], ["Final Scores: [[3, 8]]"], best=[0], order=[[1, 0]])
    [1.0]
"""

from __future__ import annotations

from .collect import CollectCounts, RFTRecord, collect, read_rft_records
from .config import CollectSettings, LoraSettings, RLSettings, SFTSettings, SPCTConfig
from .items import BadInputReason, SPCTItem, read_items
from .rule import judgment_reward, spct_rule_reward

__all__ = [
    "BadInputReason",
    "CollectCounts",
    "CollectSettings",
    "LoraSettings",
    "RFTRecord",
    "RLSettings",
    "SFTSettings",
    "SPCTConfig",
    "SPCTItem",
    "collect",
    "judgment_reward",
    "read_items",
    "read_rft_records",
    "spct_rule_reward",
]
