"""Reading Terraform modules with python-hcl2: variables, outputs, resources, references.

Also prints a module's inputs and outputs as Markdown tables (the READMEs hold them):

    python tests/iac/hcl.py terraform/modules/aws-lambda
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
MODULES = sorted(p for p in (TERRAFORM / "modules").iterdir() if p.is_dir())
EXAMPLES = sorted(p for p in (TERRAFORM / "examples").iterdir() if p.is_dir())
PLATFORM_MODULES = [p for p in MODULES if p.name != "manifest"]


def unquote(value):
    """python-hcl2 keeps string literals quoted ("\"x\""); strip one level."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def deep_unquote(value):
    if isinstance(value, dict):
        return {unquote(k): deep_unquote(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_unquote(v) for v in value]
    return unquote(value)


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return deep_unquote(hcl2.load(f))


@dataclass
class Module:
    path: Path
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    locals: set[str] = field(default_factory=set)
    resources: dict[str, dict[str, dict]] = field(default_factory=dict)
    data: dict[str, dict[str, dict]] = field(default_factory=dict)
    modules: dict[str, dict] = field(default_factory=dict)
    terraform: list[dict] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    text: str = ""

    def resource(self, kind: str, name: str) -> dict:
        return self.resources[kind][name]

    def dump(self, kind: str, name: str) -> str:
        """A resource as JSON text, for searching nested blocks."""
        return json.dumps(self.resource(kind, name))


def read_module(path: Path) -> Module:
    m = Module(path=path)
    texts = []
    for tf in sorted(path.glob("*.tf")):
        texts.append(tf.read_text(encoding="utf-8"))
        doc = load(tf)
        for block in doc.get("variable", []):
            m.variables.update(block)
        for block in doc.get("output", []):
            m.outputs.update(block)
        for block in doc.get("locals", []):
            m.locals.update(block.keys())
        for block in doc.get("resource", []):
            for kind, named in block.items():
                m.resources.setdefault(kind, {}).update(named)
        for block in doc.get("data", []):
            for kind, named in block.items():
                m.data.setdefault(kind, {}).update(named)
        for block in doc.get("module", []):
            m.modules.update(block)
        for block in doc.get("check", []):
            m.checks.update(block)
        m.terraform.extend(doc.get("terraform", []))
    m.text = "\n".join(texts)
    return m


def references(text: str, prefix: str) -> set[str]:
    """Names referenced as `prefix.name` (var, local, module, ...) outside comments."""
    code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines())
    return set(re.findall(rf"\b{re.escape(prefix)}\.([A-Za-z_][A-Za-z0-9_-]*)", code))


def markdown_tables(module: Module) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    def type_of(v: dict) -> str:
        t = v.get("type", "any")
        t = re.sub(r"\$\{(.*)\}", r"\1", str(t))
        return f"`{cell(t)}`"

    def default_of(v: dict) -> str:
        if "default" not in v:
            return "required"
        d = v["default"]
        return f"`{cell(json.dumps(d))}`"

    lines = ["## Inputs", "", "| name | description | type | default |", "|---|---|---|---|"]
    for name, v in module.variables.items():
        lines.append(f"| `{name}` | {cell(v.get('description', ''))} | {type_of(v)} | {default_of(v)} |")
    lines += ["", "## Outputs", "", "| name | description |", "|---|---|"]
    for name, o in module.outputs.items():
        lines.append(f"| `{name}` | {cell(o.get('description', ''))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_tables(read_module(Path(sys.argv[1]))))
