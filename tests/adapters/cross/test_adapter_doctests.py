"""The adapters' docstring examples run as collected from ``adapters/`` (issue 21, item 21).

The adapters are installed as ``grm_plugin.adapters`` but live in ``adapters/``: collected from
there (``pytest --doctest-modules adapters/``) they are the top-level package ``adapters``, where
a relative import of the core (``from ..cache import``) fails.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_doctest_modules_over_adapters_dir_collects_and_passes() -> None:
    # the verl manager subclasses verl's RewardManagerBase: importing it needs verl
    needs_verl = [] if find_spec("verl") else ["--ignore=adapters/verl_manager.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--doctest-modules", "adapters/", "-q"]
        + ["-p", "no:cacheprovider", *needs_verl],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
