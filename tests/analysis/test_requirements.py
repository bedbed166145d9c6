"""The transformers requirement in pyproject.toml matches the API the HF adapter uses (v5)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version


def test_transformers_requirement_is_the_v5_api_and_installed():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    (spec,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("transformers")]
    lower = [Version(s.version) for s in spec.specifier if s.operator == ">="]
    # v5: decoder layers return a tensor; masking_utils takes inputs_embeds= and cache=
    assert lower and lower[0] >= Version("5"), spec
    assert spec.specifier.contains(metadata.version("transformers"))
