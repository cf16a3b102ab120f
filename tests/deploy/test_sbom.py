"""deploy/sbom.py: the CycloneDX SBOM the image builds write of their virtual environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "sbom.py"


def _sbom(**env: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=60,
    )
    document: dict[str, Any] = json.loads(out.stdout)
    return document


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=;!~]", requirement, maxsplit=1)[0]).lower()


def test_the_sbom_lists_every_installed_dependency_with_a_package_url() -> None:
    document = _sbom(SOURCE_DATE_EPOCH="1700000000")
    assert (document["bomFormat"], document["specVersion"]) == ("CycloneDX", "1.5")
    assert document["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    assert document["metadata"]["component"]["name"] == "qwen-gateway"
    components = {c["name"]: c for c in document["components"]}
    assert len(components) == len(document["components"])  # one entry per distribution
    for component in document["components"]:
        assert component["type"] == "library"
        assert component["purl"] == f"pkg:pypi/{component['name']}@{component['version']}"
        assert component["bom-ref"] == component["purl"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        if "sys_platform" in requirement and sys.platform == "win32":
            continue
        assert _name(requirement) in components, requirement
    assert "qwen-gateway" not in components  # the described component, not a library
    # every distribution of the environment, pip included (it ships in the image's venv)
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in distributions()}
    assert set(components) == installed - {"qwen-gateway"}
    assert components["fastapi"]["licenses"]  # a declared licence is carried over


def test_the_sbom_is_deterministic_and_written_by_both_images() -> None:
    assert _sbom() == _sbom()
    assert "timestamp" not in _sbom()["metadata"]
    for name in ("Containerfile", "Containerfile.cuda"):
        text = (ROOT / "deploy" / name).read_text()
        assert "deploy/sbom.py > /opt/qwen-gateway/sbom.cdx.json" in text, name
        assert "COPY --from=build /opt/qwen-gateway /opt/qwen-gateway" in text, name
