"""Validate rendered Kubernetes manifests: built-in kinds strictly, custom resources by their CRD schema.

    .venv-tools/bin/python scripts/k8s_validate.py [--quiet] reports/k8s/prod.yaml [...]

Built-in kinds (Deployment, NetworkPolicy, HPA ...) go through kubernetes-validate in strict mode
(unknown fields are errors) for KUBERNETES_VERSION (default: the newest the package knows). Custom
resources (kafka.strimzi.io, keda.sh) go through deploy/schemas/validate-crs.mjs, the validators
generated from the Strimzi and KEDA CRDs (deploy/schemas/README.md; `make tools` installs them).
Those validators check types, enums and required fields but let unknown fields through, so this
script also rejects any field that the model's declaration (the .d.ts next to it, generated from
the same CRD) does not list: the strict mode the API server applies with field validation.
A resource that no schema covers is an error, never a pass. Prints one line per resource and
exits 1 when any resource failed. Runs in the tools venv (kubernetes-validate is not in .venv).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "deploy" / "schemas"
CRD_GROUPS = ("kafka.strimzi.io/", "keda.sh/")
PACKAGES = {
    "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
    "keda.sh": "@kubernetes-models/keda",
}
ANY = "*"  # a map or free-form object: any key
FieldTree = dict[str, Any]  # key -> FieldTree (an object), None (a scalar or list of scalars) or ANY


def declared_fields(path: Path, seen: tuple[Path, ...] = ()) -> FieldTree:
    """The field tree of the model interface in a kubernetes-models .d.ts (one key per line).

    A field typed by an interface imported from a sibling file ("./ScaleTarget.js") is expanded from
    that file; other named types (ObjectMeta, Quantity ...) accept anything here.
    """
    declaration = path.read_text()
    imports = dict(re.findall(r'import \{ (I\w+) \} from "\./([\w.]+)\.js";', declaration))
    text = re.sub(r"/\*.*?\*/", "", declaration, flags=re.S)
    if "export interface" not in text:  # an alias: of a sibling's interface, or of a scalar type
        alias = re.search(r"export type I\w+ = (?:Array<)?(I\w+)>?;", text)
        if alias and alias.group(1) in imports and path not in seen:
            return declared_fields(path.with_name(imports[alias.group(1)] + ".d.ts"), (*seen, path))
        return {ANY: ANY}
    body = text[text.index("export interface") :]
    root: FieldTree = {}
    stack: list[FieldTree] = []
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("export interface"):
            stack.append(root)
            continue
        if line.startswith("}"):
            if line.endswith(";") or line == "}":
                stack.pop()
                if not stack:
                    break
            continue  # "} & ({" and "} | {": the next branch of the same object
        node = stack[-1]
        if line.startswith("[key: string]"):
            node[ANY] = ANY
            if line.endswith("{"):
                stack.append({ANY: ANY})
            continue
        match = re.match(r'^"([^"]+)"\??: (.*)$', line)
        if not match:
            raise ValueError(f"unexpected declaration line: {line!r}")
        key, rest = match.groups()
        if rest.endswith("{"):
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            stack.append(child)
        elif (ref := re.fullmatch(r"(?:Array<)?(I\w+)>?;", rest)) and ref.group(1) in imports:
            sibling = path.with_name(imports[ref.group(1)] + ".d.ts")
            node[key] = ANY if sibling in seen else declared_fields(sibling, (*seen, path))
        elif rest in ("any;", "{};") or rest.startswith(("I", "Array<I")):
            node[key] = ANY
        else:
            node.setdefault(key, None)
    return root


def unknown_fields(value: Any, tree: Any, path: str = "") -> list[str]:
    """Paths in ``value`` that ``tree`` does not declare."""
    if tree is ANY or tree is None:
        return []
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unknown_fields(item, tree, f"{path}/{i}")]
    if not isinstance(value, dict) or tree.get(ANY) is ANY:
        return []
    found = []
    for key, item in value.items():
        if key not in tree:
            found.append(f"{path}/{key}")
        else:
            found.extend(unknown_fields(item, tree[key], f"{path}/{key}"))
    return found


def strict_errors(doc: dict[str, Any]) -> str | None:
    group, _, version = str(doc.get("apiVersion", "")).partition("/")
    declaration = SCHEMAS / "node_modules" / PACKAGES[group] / group / version / f"{doc.get('kind')}.d.ts"
    if not declaration.is_file():
        return f"no declaration {declaration.relative_to(ROOT)}"
    unknown = unknown_fields(doc, declared_fields(declaration))
    return f"unknown fields: {', '.join(unknown)}" if unknown else None


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')})"


def validate_builtin(doc: dict[str, Any], version: str) -> str | None:
    """None when ``doc`` is valid, else the error."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return f"{path}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError:
        return "no schema for this apiVersion/kind"
    return None


def validate_custom(docs: list[dict[str, Any]]) -> list[str | None]:
    """One result per doc from the CRD validators (node, deploy/schemas/validate-crs.mjs)."""
    if not docs:
        return []
    if not (SCHEMAS / "node_modules").is_dir():
        raise SystemExit(f"{SCHEMAS}/node_modules is missing: run `make tools` (npm ci there)")
    done = subprocess.run(
        ["node", str(SCHEMAS / "validate-crs.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        cwd=SCHEMAS,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"validate-crs.mjs failed: {done.stderr}")
    results = [None if r["ok"] else r["error"] for r in json.loads(done.stdout)]
    return [error or strict_errors(doc) for doc, error in zip(docs, results, strict=True)]


def main(args: list[str]) -> int:
    quiet = "--quiet" in args
    paths = [a for a in args if a != "--quiet"]
    if not paths:
        sys.stderr.write(__doc__ or "")
        return 2
    version = os.environ.get("KUBERNETES_VERSION") or kubernetes_validate.latest_version()
    failed = 0
    for path in paths:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        custom = [d for d in docs if str(d.get("apiVersion", "")).startswith(CRD_GROUPS)]
        custom_results = iter(validate_custom(custom))
        for doc in docs:
            is_custom = str(doc.get("apiVersion", "")).startswith(CRD_GROUPS)
            error = next(custom_results) if is_custom else validate_builtin(doc, version)
            via = "CRD schema" if is_custom else f"kubernetes {version} strict"
            if error is None:
                if not quiet:
                    print(f"PASS {path} {_name(doc)} [{via}]")
            else:
                failed += 1
                print(f"FAIL {path} {_name(doc)} [{via}]: {error}")
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
