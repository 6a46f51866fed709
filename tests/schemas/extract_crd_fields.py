"""Regenerate ``crd_fields.json``: the fields the CRDs we ship allow, from typed npm models.

Not run by the tests (they read the JSON it wrote); run it by hand to move to newer CRD versions:

    cd /tmp && npm pack @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/keda@2.0.0
    for f in kubernetes-models-*.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
    python tests/schemas/extract_crd_fields.py \\
        /tmp/kubernetes-models-prometheus-operator-6.0.0/package \\
        /tmp/kubernetes-models-keda-2.0.0/package > tests/schemas/crd_fields.json

Why these packages: they are generated from the operators' Go API types (the same source as the
CRDs' OpenAPI schemas) and ship one TypeScript declaration per type, whose ``declare class`` lists
every field, inherited ones included. Only the types reachable from the kinds we ship are kept.

A field's type is written compactly:
``string``, ``number``, ``boolean``, ``any``, ``int-or-string``, ``quantity``,
``enum:a|b`` (string literals), ``[]T`` (list), ``{}T`` (map of string to T),
``@Name`` (another type in this file), ``k8s:V1Name`` (a core Kubernetes type, checked against
the ``kubernetes`` Python client's model of that name).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# The kinds the manifests use: apiVersion/kind -> (package directory, declaration file).
ROOTS = {
    "monitoring.coreos.com/v1/ServiceMonitor": "monitoring.coreos.com/v1/ServiceMonitor.d.ts",
    "monitoring.coreos.com/v1/PrometheusRule": "monitoring.coreos.com/v1/PrometheusRule.d.ts",
    "keda.sh/v1alpha1/ScaledObject": "keda.sh/v1alpha1/ScaledObject.d.ts",
}

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$]*|\S')
_IMPORT = re.compile(r'import \{ (\w+) \} from "([^"]+)";')


def tokenize(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return _TOKEN.findall(text)


class Extractor:
    def __init__(self, packages: list[Path]) -> None:
        self.packages = packages
        self.types: dict[str, dict[str, str]] = {}
        self.pending: list[Path] = []

    def find(self, relative: str) -> Path:
        for package in self.packages:
            if (package / relative).exists():
                return package / relative
        raise FileNotFoundError(relative)

    @staticmethod
    def name_of(path: Path) -> str:
        return f"{path.parent.parent.name}/{path.parent.name}/{path.name.removesuffix('.d.ts')}"

    def external(self, module: str) -> str:
        """A type from the core Kubernetes model packages, by its module path."""
        last = module.rsplit("/", 1)[-1]
        if last == "IntOrString":
            return "int-or-string"
        if last == "Quantity":
            return "quantity"
        if last in ("Time", "MicroTime"):
            return "string"
        match = re.search(r"/(v\d\w*)/(\w+)$", module)
        if match is None:
            raise ValueError(f"unknown external type module {module}")
        return f"k8s:{match.group(1).capitalize()}{match.group(2)}"

    def resolve(self, ident: str, imports: dict[str, str], here: Path) -> str:
        module = imports.get(ident)
        if module is None:
            raise ValueError(f"{here}: no import for {ident}")
        if not module.startswith("."):
            return self.external(module)
        path = (here.parent / module.replace(".js", ".d.ts")).resolve()
        text = path.read_text()
        alias = re.search(r"export type I\w+ = (.+?);\n", text, flags=re.S)
        if alias is not None and "declare class" not in text:
            return self.parse_type(tokenize(alias.group(1)), 0, self.imports(text), path)[0]
        name = self.name_of(path)
        if name not in self.types and path not in self.pending:
            self.pending.append(path)
        return f"@{name}"

    @staticmethod
    def imports(text: str) -> dict[str, str]:
        return dict(_IMPORT.findall(text))

    def parse_type(
        self, tokens: list[str], i: int, imports: dict[str, str], here: Path
    ) -> tuple[str, int]:
        """Parse one type starting at ``tokens[i]``; return its compact form and the next index."""
        alternatives: list[str] = []
        while True:
            token = tokens[i]
            if token == "Array" and tokens[i + 1] == "<":
                inner, i = self.parse_type(tokens, i + 2, imports, here)
                assert tokens[i] == ">", tokens[i - 3 : i + 3]
                result, i = f"[]{inner}", i + 1
            elif token == "{":
                # only index signatures appear inline: { [key: string]: T; }
                assert tokens[i + 1 : i + 6] == ["[", "key", ":", "string", "]"], tokens[i : i + 8]
                inner, i = self.parse_type(tokens, i + 7, imports, here)
                while tokens[i] in (";",):
                    i += 1
                assert tokens[i] == "}", tokens[i - 3 : i + 3]
                result, i = f"{{}}{inner}", i + 1
            elif token in ("string", "number", "boolean", "any"):
                result, i = token, i + 1
            elif token.startswith('"'):
                result, i = f"enum:{json.loads(token)}", i + 1
            else:
                result, i = self.resolve(token, imports, here), i + 1
            alternatives.append(result)
            if i < len(tokens) and tokens[i] == "|":
                i += 1
                continue
            break
        if len(alternatives) == 1:
            return alternatives[0], i
        if all(a.startswith("enum:") for a in alternatives):
            return "enum:" + "|".join(a.removeprefix("enum:") for a in alternatives), i
        return "any", i

    def declare(self, path: Path) -> None:
        text = path.read_text()
        imports = self.imports(text)
        match = re.search(
            r"export declare class \w+ extends [^{]*\{(.*?)\n    constructor", text, re.S
        )
        if match is None:
            raise ValueError(f"{path}: no class declaration")
        tokens = tokenize(match.group(1))
        fields: dict[str, str] = {}
        i = 0
        while i < len(tokens):
            if tokens[i] == "static":  # static apiVersion / kind / is: not instance fields
                while tokens[i] != ";":
                    i += 1
                i += 1
                continue
            name = json.loads(tokens[i])
            i += 1
            if tokens[i] == "?":
                i += 1
            assert tokens[i] == ":", (path, name, tokens[i])
            kind, i = self.parse_type(tokens, i + 1, imports, path)
            assert tokens[i] == ";", (path, name, tokens[i : i + 3])
            fields[name] = kind
            i += 1
        self.types[self.name_of(path)] = fields

    def run(self) -> dict[str, object]:
        kinds = {}
        for kind, relative in ROOTS.items():
            path = self.find(relative).resolve()
            kinds[kind] = self.name_of(path)
            self.pending.append(path)
        while self.pending:
            path = self.pending.pop(0)
            if self.name_of(path) not in self.types:
                self.declare(path)
        return {
            "source": (
                "Generated by tests/schemas/extract_crd_fields.py from the npm packages "
                "@kubernetes-models/prometheus-operator@6.0.0 and @kubernetes-models/keda@2.0.0 "
                "(MIT, see LICENSE-kubernetes-models), themselves generated from the "
                "prometheus-operator and KEDA Go API types (Apache-2.0)."
            ),
            "kinds": kinds,
            "types": dict(sorted(self.types.items())),
        }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    document = Extractor([Path(p) for p in argv]).run()
    json.dump(document, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
