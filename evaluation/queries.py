"""Evaluation query files: JSONL, one query per line.

Each line is ``{"query": "red bag", "image": "optional/path.jpg", "relevant": ["P1", "P7"]}`` with
at least one of ``query``/``image``; an optional ``suite`` names the group the query is reported
in (default: what the query holds, ``text``, ``image`` or ``text+image``). An empty ``relevant``
list says nothing should match (made-up words): such a query is scored by whether it got "no close
matches". Image paths are
relative to the file's folder unless absolute or URLs. Other keys are kept as notes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from shelfsight.search.errors import BadInputError

LINE_SHAPE = '{"query": "red bag", "image": "optional.jpg", "relevant": ["id", ...]}'


@dataclass(frozen=True)
class EvalQuery:
    line: int
    text: str | None
    image: str | None  # absolute path or URL
    relevant: tuple[str, ...]
    suite: str

    @property
    def parts(self) -> str:
        return "+".join(p for p, v in (("text", self.text), ("image", self.image)) if v)


def read_queries(path: str | Path) -> list[EvalQuery]:
    """Parse and check a queries file; a bad line is an error naming its number and the fix."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"queries file not found: {path}; `shelfsight data generate` writes one as queries.jsonl")
    queries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        queries.append(_parse_line(raw, number, path))
    if not queries:
        raise BadInputError(f"{path} holds no queries; write one JSON object per line: {LINE_SHAPE}")
    return queries


def _parse_line(raw: str, number: int, path: Path) -> EvalQuery:
    where = f"{path} line {number}"
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{where}: not JSON ({exc.msg}); each line is {LINE_SHAPE}") from None
    if not isinstance(item, dict):
        raise BadInputError(f"{where}: expected a JSON object like {LINE_SHAPE}")
    text, image, relevant = item.get("query"), item.get("image"), item.get("relevant")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise BadInputError(f"{where}: 'query' must be non-empty text")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise BadInputError(f"{where}: 'image' must be a path or URL")
    if not text and not image:
        raise BadInputError(f"{where}: give 'query', 'image' or both")
    if not isinstance(relevant, list) or not all(isinstance(r, (str, int)) for r in relevant):
        raise BadInputError(f"{where}: 'relevant' must be a list of product ids ([] when nothing should match)")
    if image and not image.lower().startswith(("http://", "https://")) and not Path(image).is_absolute():
        image = str((path.parent / image).resolve())
    query = EvalQuery(line=number, text=text, image=image, relevant=tuple(str(r) for r in relevant), suite="")
    return replace(query, suite=str(item.get("suite") or query.parts))
