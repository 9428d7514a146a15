"""The image runs the Makefile's steps: ``make setup`` builds it, and the two documented commands, ``make test``
(the default) and ``make quickstart``, are its entry points. ``docker build`` runs where a docker engine is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def instructions() -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` of each Dockerfile instruction, continuations joined and comments dropped."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def arg_default(name: str) -> str:
    return next(args.split("=", 1)[1] for key, args in instructions() if key == "ARG" and args.startswith(f"{name}="))


def test_the_image_is_built_by_make_setup_with_the_makefiles_torch():
    runs = [args for key, args in instructions() if key == "RUN"]
    setup = [run for run in runs if re.search(r"\bmake setup\b", run)]
    assert setup == [runs[-1]], f"the image must be set up by `make setup` (its last RUN), got {runs}"
    assert 'PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"' in setup[0] and 'TORCH_VERSION="${TORCH_VERSION}"' in setup[0]
    assert not [run for run in runs if "pip install" in run], "pip runs only through `make setup`"
    makefile_torch = re.search(r"^TORCH_VERSION \?= (\S+)$", MAKEFILE, re.M).group(1)
    assert arg_default("TORCH_VERSION") == makefile_torch
    assert arg_default("TORCH_INDEX_URL").endswith("/whl/cpu")


def test_the_documented_commands_are_the_images_entry_points():
    assert instructions()[-1] == ("CMD", '["make", "test"]')
    assert ("ENV", "PATH=/opt/classp_hf/.venv/bin:$PATH") in instructions()  # the venv `make setup` built
    assert "classp-hf make quickstart" in DOCKERFILE  # documented in its header, as `docker run ... classp-hf`
    prerequisites = {target: deps.split() for target, deps in re.findall(r"^([\w-]+):[ \t]*(.*)$", MAKEFILE, re.M)}

    def needs(target: str) -> set[str]:
        direct = set(prerequisites.get(target, []))
        return direct.union(*map(needs, direct))

    assert "setup" in needs("quickstart") and "setup" in needs("test"), "both entry points set up the venv first"
    env = " ".join(args for key, args in instructions() if key == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "CLASSP_HF_DATA=/data/sentiment" in env


def test_the_build_context_has_the_sources_and_not_the_local_state():
    assert ("COPY", ". .") in instructions()
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "runs"} <= set(ignored)
    needed = {"Makefile", "pyproject.toml", "classp_hf", "tests", "recipes"}
    assert not needed & set(ignored), f".dockerignore drops what `make setup`/`make test` need: {needed & set(ignored)}"


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.slow
def test_docker_build_and_the_entry_points_resolve_in_the_image():
    if not _docker_engine():
        pytest.skip("no docker engine here (`docker info` fails): the image is not built")
    tag = "classp-hf:pytest"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True)
    try:
        dry_run = subprocess.run(
            ["docker", "run", "--rm", tag, "make", "-n", "test", "quickstart"], capture_output=True, text=True
        )
        assert dry_run.returncode == 0, dry_run.stderr
        assert "pytest -q tests" in dry_run.stdout and "classp-hf compare" in dry_run.stdout
        assert "pip install" not in dry_run.stdout, "the image's venv is not set up: make would reinstall"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
