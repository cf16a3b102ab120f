"""Write a CycloneDX 1.5 SBOM (JSON) of the Python distributions installed in this interpreter's
environment: run by the image builds with the image's own interpreter, standard library only.

    /opt/qwen-gateway/bin/python deploy/sbom.py > /opt/qwen-gateway/sbom.cdx.json

Each distribution becomes a ``library`` component with its version, a ``pkg:pypi`` package
URL and its declared licence; the gateway itself is the described component. The output is
deterministic for a given environment (sorted, no timestamp unless SOURCE_DATE_EPOCH is set).
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

ROOT = "qwen-gateway"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _licenses(dist: metadata.Distribution) -> list[dict[str, Any]]:
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return [{"expression": expression}]
    classifiers = [
        c.rsplit(" :: ", 1)[-1]
        for c in meta.get_all("Classifier") or []
        if c.startswith("License :: ") and c.count("::") >= 2
    ]
    if classifiers:
        return [{"license": {"name": name}} for name in sorted(set(classifiers))]
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 100:
        return [{"license": {"name": text}}]
    return []


def _component(dist: metadata.Distribution) -> dict[str, Any]:
    name = _normalise(dist.metadata["Name"])
    version = dist.version
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": f"pkg:pypi/{name}@{version}",
        "name": name,
        "version": version,
        "purl": f"pkg:pypi/{name}@{version}",
    }
    licenses = _licenses(dist)
    if licenses:
        component["licenses"] = licenses
    return component


def sbom() -> dict[str, Any]:
    dists = {_normalise(d.metadata["Name"]): d for d in metadata.distributions()}
    root = dists.pop(ROOT, None)  # everything else ships, the installer (pip) included
    components = [_component(dists[name]) for name in sorted(dists)]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    meta: dict[str, Any] = {
        "tools": {"components": [{"type": "application", "name": "deploy/sbom.py"}]},
    }
    if epoch is not None:
        meta["timestamp"] = datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if root is not None:
        meta["component"] = {**_component(root), "type": "application"}
    document: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": meta,
        "components": components,
    }
    return document


if __name__ == "__main__":
    json.dump(sbom(), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
