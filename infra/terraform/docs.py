"""Write the inputs/outputs/requirements section of each env's and module's README.

The terraform-docs layout, generated from the .tf files so it cannot drift (a test checks the
READMEs are current). Run from the repository root after changing variables or outputs:

    .venv/bin/python infra/terraform/docs.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import hcl2

HERE = Path(__file__).resolve().parent
FOLDERS = ["envs/volcengine", "envs/existing-cluster", "modules/volcengine-cluster", "modules/workshop-platform"]
BEGIN, END = "<!-- BEGIN_TF_DOCS -->", "<!-- END_TF_DOCS -->"


def _plain(value):
    """python-hcl2 keeps the quotes of string literals; drop them at every depth."""
    if isinstance(value, str):
        value = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        return value.replace('\\"', '"')
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _text(value) -> str:
    if isinstance(value, str):
        return re.sub(r"^\$\{(.*)\}$", r"\1", _plain(value), flags=re.S)
    return json.dumps(_plain(value))


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _load(folder: Path) -> dict:
    merged: dict = {}
    for path in sorted(folder.glob("*.tf")):
        with path.open() as f:
            for kind, items in hcl2.load(f).items():
                merged.setdefault(kind, []).extend(items)
    return merged


def section(folder: Path) -> str:
    config = _load(folder)
    lines = [BEGIN, "## Requirements", "", "| Name | Version |", "|------|---------|"]
    for block in config.get("terraform", []):
        lines.append(f"| terraform | {_cell(_text(block.get('required_version', '')))} |")
        for providers in block.get("required_providers", []):
            for name, spec in providers.items():
                if name != "__is_block__":
                    lines.append(f"| {name} | {_cell(_text(spec['version']))} |")
    lines += ["", "## Inputs", "", "| Name | Description | Type | Default | Required |",
              "|------|-------------|------|---------|:--------:|"]
    for block in config.get("variable", []):
        for name, body in block.items():
            name = name.strip('"')
            has_default = "default" in body
            default = f"`{_cell(_text(body['default']))}`" if has_default else "n/a"
            lines.append(f"| {name} | {_cell(_text(body.get('description', '')))} | `{_cell(_text(body['type']))}` | "
                         f"{default} | {'no' if has_default else 'yes'} |")
    lines += ["", "## Outputs", "", "| Name | Description | Sensitive |", "|------|-------------|:---------:|"]
    for block in config.get("output", []):
        for name, body in block.items():
            lines.append(f"| {name.strip(chr(34))} | {_cell(_text(body.get('description', '')))} | "
                         f"{'yes' if body.get('sensitive') else 'no'} |")
    return "\n".join(lines + [END])


def updated(readme: str, folder: Path) -> str:
    if BEGIN not in readme:
        return readme.rstrip() + "\n\n" + section(folder) + "\n"
    head, rest = readme.split(BEGIN, 1)
    return head + section(folder) + rest.split(END, 1)[1]


def main() -> int:
    for name in FOLDERS:
        readme = HERE / name / "README.md"
        text = readme.read_text() if readme.exists() else f"# {name}\n"
        readme.write_text(updated(text, HERE / name))
        print(f"wrote {readme.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
