"""The README's adapter sections say what the adapters do (issue 21, items 18 and 20).

Runs in the core suite: ``GRMReward`` imports no trl.
"""

from __future__ import annotations

import re
from pathlib import Path

from grm_plugin.adapters.trl import GRMReward
from grm_plugin.results import FailureKind
from grm_plugin.testing import RuleJudgeEngine

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    return README[start : README.index("\n### ", start + 1)]


def _table_row(section: str, name: str) -> str:
    (row,) = [ln for ln in section.splitlines() if ln.startswith(f"| {name} |")]
    return row


def test_trl_metrics_table_lists_exactly_the_keys_trl_gets() -> None:
    logged: dict[str, float] = {}
    reward = GRMReward(engine=RuleJudgeEngine(), name="grm")
    # a scored, an empty and an identical completion: every key is logged once something scored
    reward.score(["Q?"] * 3, ["an answer", "", "an answer"], log_metric=logged.__setitem__)
    got = {key.removeprefix("grm/") for key in logged}

    row = _table_row(_section("### trl"), "metrics (`log_metric`)")
    named = set(re.findall(r"`<name>/(grm_\w+?)`", row))
    kinds = re.search(r"`<name>/grm_failed_<kind>` \(([^)]*)\)", row)
    assert kinds, row
    listed = [k.strip() for k in kinds.group(1).split(",")]
    assert listed == [k.value for k in FailureKind]
    named |= {f"grm_failed_{k}" for k in listed}
    assert named == got, (sorted(named - got), sorted(got - named))


def test_verl_section_warns_that_the_legacy_manager_key_is_ignored() -> None:
    # the pre-0.9 key composes in verl 0.9.1 but main_ppo never reads it (checked against verl
    # itself in tests/adapters/verl: test_legacy_reward_manager_key_is_ignored_by_main_ppo)
    section = _section("### verl")
    warning = section[section.index("`reward_model.reward_manager=grm`") :][:400]
    assert "silently" in warning and "`reward.reward_manager.name=grm`" in warning


def _pip_commands(text: str) -> list[str]:
    """Every ``pip install`` command in shell text, up to the next ``&&``, ``;``, ``|``, ``#``
    or backtick (the end of an inline code span)."""
    return [m.group(0) for m in re.finditer(r"pip install[^`\n;|#&]*", text)]


def _unquoted_specials(command: str) -> list[str]:
    """Characters the shell would take as a redirect (``>``, ``<``) or a glob (``[``) outside
    quotes."""
    out, quote = [], ""
    for ch in command:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "<>[":
            out.append(ch)
    return out


def test_unquoted_specs_are_found() -> None:
    assert _unquoted_specials("pip install trl>=1.16") == [">"]
    assert _unquoted_specials("pip install grm-plugin[vllm]") == ["["]
    assert _unquoted_specials('pip install "trl>=1.16" \'a<2\' "x[y]"') == []


def test_every_pip_install_in_readme_and_examples_quotes_its_specs() -> None:
    texts = {"README.md": README}
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.suffix in {".sh", ".py", ".yaml", ".md"}:
            texts[str(path.relative_to(ROOT))] = path.read_text()
    seen, bad = 0, []
    for name, text in texts.items():
        for command in _pip_commands(text):
            seen += 1
            if _unquoted_specials(command):
                bad.append(f"{name}: {command.strip()}")
    assert seen >= 10
    assert not bad, "unquoted version spec or extra (a shell redirect or glob):\n" + "\n".join(bad)
