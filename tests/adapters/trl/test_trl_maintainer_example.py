"""The maintainers' example for trl (examples/maintainers/test_trl_example.py), run exactly as
written in trl's own environment, in a fresh pytest process that finds grm-plugin's fixtures
through the installed ``pytest11`` entry point (as a maintainer's project would)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.adapters
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "maintainers" / "test_trl_example.py"


def test_example_passes_as_written(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    # cwd outside the repo: an in-tree *.egg-info must not shadow the installed entry points
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
