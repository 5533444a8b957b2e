"""The trained LoRA adapter as a file to publish: peft format, bf16 safetensors, a manifest.

``save_adapter`` writes peft's ``adapter_config.json`` and ``adapter_model.safetensors`` (weights
cast to bfloat16: half the bytes, and what GPU judges run in) plus ``spct_adapter.json``: the base
it was trained on (``default``: the embedded demo judge), the base's shape (checked when the
adapter is loaded), the sha256 and size of the weights file. ``TransformersEngineConfig(model=...,
adapter=folder)`` or a bare ``GenerativeRewardFn(folder)`` load it onto its base.

An adapter trained on a base that is itself base + adapter (``spct rl --base`` the RFT adapter)
is stacked onto that first adapter (``stack_adapters``: ranks concatenated, exact), so the
published adapter applies to the original base alone.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "adapter_model.safetensors").write_bytes(b"weights")
    >>> m = write_manifest(d, "org/model", {"model_type": "llama"})
    >>> m["base"], m["size_bytes"], m["sha256"][:12]
    ('org/model', 7, '9a129038d9a0')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..engines.transformers_engine import (
    ADAPTER_MANIFEST,
    ADAPTER_WEIGHTS,
    DEFAULT_BASE,
    adapter_base,
    base_shape,
    file_sha256,
    is_adapter_folder,
)

WEIGHTS = ADAPTER_WEIGHTS


def manifest_base(base: str | None) -> str:
    """How a manifest names the base: ``default`` for the embedded judge, an absolute path for
    a local folder or file, else the hub id as given."""
    if not base:
        return DEFAULT_BASE
    p = Path(base).expanduser()
    return str(p.resolve()) if p.exists() else base


def write_manifest(folder: Path, base: str, shape: dict[str, Any]) -> dict[str, Any]:
    """Write ``spct_adapter.json`` for the weights in ``folder`` and return it."""
    weights = folder / WEIGHTS
    manifest = {
        "base": base,
        "base_shape": shape,
        "weights": WEIGHTS,
        "sha256": file_sha256(weights),
        "size_bytes": weights.stat().st_size,
        "dtype": "bfloat16",
    }
    (folder / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _cast_bf16(weights: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})


def save_adapter(peft_model: Any, out: Path, base: str | None) -> dict[str, Any]:
    """Save ``peft_model``'s adapter unmerged into ``out`` (bf16 safetensors + manifest) and
    return the manifest. ``base``: what the model was trained from (None: the embedded judge;
    an adapter folder: the new adapter is stacked onto it)."""
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    shape = base_shape(peft_model.get_base_model().config)
    if base and is_adapter_folder(base):
        stack_adapters(Path(base), out, out)
        named = _root_base(Path(base))
    else:
        named = manifest_base(base)
    _cast_bf16(out / WEIGHTS)
    return write_manifest(out, named, shape)


def _root_base(adapter: Path) -> str:
    """The base an adapter folder applies to, as its manifest names it."""
    manifest = adapter / ADAPTER_MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["base"]
    return manifest_base(adapter_base(adapter))


def stack_adapters(first: Path, second: Path, out: Path) -> None:
    """One LoRA adapter equal to ``first`` then ``second`` applied on top (``second`` trained
    on the base with ``first`` merged in): per module, A = [s1 A1; s2 A2] and B = [B1, B2] with
    scaling 1, rank r1 + r2. Exact, since the merged deltas add: W + s1 B1 A1 + s2 B2 A2."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (first, second)]
    tensors = [load_file(str(d / WEIGHTS)) for d in (first, second)]
    if any(c.get("rank_pattern") or c.get("alpha_pattern") for c in configs):
        raise ValueError("stacking adapters with per-module ranks is not supported")
    scales = [c["lora_alpha"] / c["r"] for c in configs]
    a_keys = [sorted(k for k in t if ".lora_A." in k) for t in tensors]
    if a_keys[0] != a_keys[1]:
        raise ValueError(f"{first} and {second} adapt different modules: cannot stack them")
    stacked: dict[str, torch.Tensor] = {}
    for a_key in a_keys[0]:
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        stacked[a_key] = torch.cat(
            [t[a_key].float() * s for t, s in zip(tensors, scales, strict=True)], dim=0
        )
        stacked[b_key] = torch.cat([t[b_key].float() for t in tensors], dim=1)
    rank = configs[0]["r"] + configs[1]["r"]
    config = {**configs[1], "r": rank, "lora_alpha": rank}
    for key in ("use_rslora", "use_dora"):
        if config.get(key):
            raise ValueError(f"stacking adapters with {key} is not supported")
    # the stacked base is the first adapter's base
    config["base_model_name_or_path"] = configs[0].get("base_model_name_or_path")
    out.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
