"""InferenceServices checked strictly against the types of KServe's Python SDK (generated
from the same Go API as KServe's CRD): unknown fields and wrong scalar types are problems.

    python tests/deploy/kserve_types.py < services.json   # prints a list of problems per service

Run as a process of its own by tests/deploy/test_kubernetes.py (see `_kserve_problems` there).
"""

from __future__ import annotations

import json
import re
import sys

import kserve.models
import kubernetes.client

def problems(value, type_name: str, path: str = "") -> list[str]:
    """`value` checked against a type of KServe's SDK (or the Kubernetes client's, which it
    uses for containers and metadata): unknown fields and wrong scalar types are problems."""
    found = []
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        for i, item in enumerate(value):
            found += problems(item, m[1], f"{path}[{i}]")
    elif m := re.fullmatch(r"(?:Dict\[str, (.+)\]|dict\(str, (.+)\))", type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        for key, item in value.items():
            found += problems(item, m[1] or m[2], f"{path}.{key}")
    elif type_name in ("str", "int", "bool", "float", "object", "datetime"):
        wanted = {"str": str, "int": int, "bool": bool, "float": (int, float),
                  "object": object, "datetime": str}[type_name]
        if not isinstance(value, wanted) or (type_name == "int" and isinstance(value, bool)):
            found.append(f"{path}: expected {type_name}, got {value!r}")
    else:
        cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client, type_name)
        if not isinstance(value, dict):
            return [f"{path}: expected a {type_name} object"]
        fields = {wire: cls.openapi_types[attr] for attr, wire in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                found.append(f"{path}.{key}: no such field in {type_name}")
            else:
                found += problems(item, fields[key], f"{path}.{key}")
    return found


if __name__ == "__main__":
    print(json.dumps([problems(doc, "V1beta1InferenceService") for doc in json.load(sys.stdin)]))
