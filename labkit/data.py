"""Small datasets shipped in ``datasets/``, each with a datasheet.

Example:
    >>> from labkit.data import read_prompts
    >>> rows = read_prompts("chat_prompts_mini")
    >>> len(rows), sorted(rows[0])
    (24, ['category', 'id', 'lang', 'prompt'])
"""

from __future__ import annotations

import json
from pathlib import Path


def datasets_dir() -> Path:
    """The repo's ``datasets/`` folder (labkit is installed editable from the repo)."""
    return Path(__file__).resolve().parent.parent / "datasets"


def read_prompts(name_or_path: str | Path) -> list[dict]:
    """Rows of a prompts JSONL file: a dataset name under ``datasets/`` or a path to a ``.jsonl`` file.

    Every row needs a unique ``id`` and a non-empty string ``prompt``; the first bad line raises a
    ValueError naming the file and line, so a typo never silently drops a prompt.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = datasets_dir() / str(name_or_path) / "prompts.jsonl"
    if not path.is_file():
        known = sorted(p.parent.name for p in datasets_dir().glob("*/prompts.jsonl"))
        raise FileNotFoundError(f"no prompts file at {path}; datasets with prompts: {', '.join(known)}")
    return _read_rows(path, ("prompt",))


# workshop_qa's responses end with one of these (its datasheet): the form a fine-tune learns first.
SIGN_OFFS = ("— labkit TA", "—— labkit 助教")


def sign_off_rate(replies: list[str]) -> float:
    """Share of ``replies`` whose last line is a workshop_qa sign-off (what the fine-tuned model
    learned, next to its evaluation loss).

    Example:
        >>> sign_off_rate(["Ray runs tasks. — labkit TA", "KubeRay runs Ray on Kubernetes."])
        0.5
    """
    if not replies:
        raise ValueError("sign_off_rate needs at least one reply")
    last_lines = [(r.strip().splitlines() or [""])[-1].strip() for r in replies]
    return sum(any(line.endswith(s) for s in SIGN_OFFS) for line in last_lines) / len(replies)


def read_instructions(name_or_path: str | Path = "workshop_qa", *, split: str = "train") -> list[dict]:
    """Instruction/response pairs for fine-tuning: a dataset name (``split`` picks ``train.jsonl``
    or ``eval.jsonl``) or a ``.jsonl`` path. Same checks as ``read_prompts``, on ``instruction``
    and ``response``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = datasets_dir() / str(name_or_path) / f"{split}.jsonl"
    if not path.is_file():
        known = sorted({p.parent.name for p in datasets_dir().glob("*/train.jsonl")})
        raise FileNotFoundError(f"no instructions file at {path}; datasets with instructions: {', '.join(known)}")
    return _read_rows(path, ("instruction", "response"))


def _read_rows(path: Path, fields: tuple[str, ...]) -> list[dict]:
    rows, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}:{lineno}: each line must be an object with an 'id'")
        for field in fields:
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise ValueError(f"{path}:{lineno}: '{field}' must be a non-empty string")
        if row["id"] in seen:
            raise ValueError(f"{path}:{lineno}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        rows.append(row)
    return rows
