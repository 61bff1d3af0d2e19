"""A manifest open for editing: the YAML document as written (comments, key order, flow style kept by
ruamel.yaml's round trip), edits addressed by the field paths the validator reports
(``task.objects[0].placement.x``), each edit validated at once with its problems attached to their
fields, an undo history, and the content hash of the last valid state.

Validation is :func:`worldgen.manifest.parse_manifest` on the edited text, so the editor and every
command agree on what is valid.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from ..errors import ArgumentError
from ..files import write_atomically
from ..manifest import Manifest, ManifestError, ManifestProblem, format_field_path, parse_manifest

# The shipped manifests' indentation (lists indented under their key); with it a document that is
# opened and saved unchanged is byte-identical (tested).
_INDENT = {"mapping": 2, "sequence": 4, "offset": 2}
_PATH_PART = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^']*)'\]")
MAIN_SECTIONS = (
    "task",
    "cameras",
    "stressors",
    "horizon",
    "seeds",
    "world_model",
    "generation",
    "policy",
    "evaluation",
)


def _yaml() -> YAML:
    y = YAML()  # round-trip mode
    y.preserve_quotes = True
    y.width = 4096
    y.indent(**_INDENT)
    return y


def split_field_path(path: str) -> list[str | int]:
    """``"task.objects[0].placement.x"`` -> ``["task", "objects", 0, "placement", "x"]``; the inverse of
    the validator's formatting."""
    parts: list[str | int] = []
    position = 0
    while position < len(path):
        match = _PATH_PART.match(path, position)
        if match is None or (position == 0 and path.startswith(".")):
            raise ArgumentError(f"field path {path!r}: expected names joined by dots, indices as [0]")
        name, index, quoted = match.groups()
        parts.append(int(index) if index is not None else name if name is not None else quoted)
        position = match.end()
    if not parts:
        raise ArgumentError("field path '': expected a field such as seeds.count")
    return parts


def _like(old: Any, new: Any) -> Any:
    """``new`` as ruamel nodes, in the flow style ``old`` was written in (``[0.4, 0.5]`` stays inline)."""
    if isinstance(new, dict) and not isinstance(new, CommentedMap):
        node = CommentedMap(new)
        if getattr(old, "fa", None) is not None and old.fa.flow_style():
            node.fa.set_flow_style()
        return node
    if isinstance(new, list | tuple) and not isinstance(new, CommentedSeq):
        node = CommentedSeq(list(new))
        if old is None or (getattr(old, "fa", None) is not None and old.fa.flow_style()):
            node.fa.set_flow_style()
        return node
    return new


class ManifestDocument:
    """One manifest being edited. ``problems`` maps a field path to its messages (empty when valid);
    ``manifest`` is the last valid state; ``content_hash`` its hash."""

    def __init__(self, text: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self._yaml = _yaml()
        self._history: list[str] = []
        self.manifest: Manifest | None = None
        self.problems: dict[str, list[str]] = {}
        self._load_text(text)

    @classmethod
    def open(cls, path: str | Path) -> ManifestDocument:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError([ManifestProblem(str(path), 0, "<file>", f"cannot read: {exc}")]) from None
        return cls(text, path)

    # -- state ------------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        buffer = io.StringIO()
        self._yaml.dump(self._data, buffer)
        return buffer.getvalue()

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def content_hash(self) -> str | None:
        """The manifest's content hash while the document is valid, else ``None``."""
        return self.manifest.content_hash() if self.valid and self.manifest is not None else None

    @property
    def file(self) -> str:
        return str(self.path) if self.path is not None else "<unsaved>"

    def _load_text(self, text: str) -> None:
        try:
            self._data = self._yaml.load(text)
        except YAMLError as exc:
            raise ManifestError(
                [ManifestProblem(self.file, 1, "<yaml>", " ".join(str(exc).split()))]
            ) from None
        self._validate()

    def _validate(self) -> None:
        base_dir = self.path.resolve().parent if self.path is not None else None
        try:
            self.manifest = parse_manifest(self.text, file=self.file, base_dir=base_dir)
        except ManifestError as exc:
            self.problems = {}
            for problem in exc.problems:
                self.problems.setdefault(problem.field, []).append(f"line {problem.line}: {problem.message}")
            return
        self.problems = {}

    def problems_under(self, path: str) -> dict[str, list[str]]:
        """The problems of ``path`` and of the fields inside it."""
        return {f: m for f, m in self.problems.items() if f == path or f.startswith((path + ".", path + "["))}

    # -- reading and editing ------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        """The value at a field path as written in the document (``None`` if it is not written)."""
        node: Any = self._data
        for part in split_field_path(path):
            inside = isinstance(node, list) if isinstance(part, int) else isinstance(node, dict)
            if (
                not inside
                or (isinstance(part, int) and part >= len(node))
                or (isinstance(part, str) and part not in node)
            ):
                return None
            node = node[part]
        return node

    def get_text(self, path: str) -> str:
        """The value at ``path`` as one line of YAML (flow style), for a text field."""
        value = self.get(path)
        if value is None:
            return ""
        buffer = io.StringIO()
        y = YAML()
        y.default_flow_style = True
        y.width = 4096
        y.dump(_plain(value), buffer)
        return buffer.getvalue().strip().removesuffix("...").strip()

    def set(self, path: str, value: Any) -> bool:
        """Write ``value`` at ``path`` (missing mappings on the way are created; index == length appends),
        validate, and keep the previous text for :meth:`undo`. Returns whether the document is valid.
        A path that cannot be written is refused (:class:`ArgumentError`) with the document unchanged."""
        parts = split_field_path(path)
        before = self.text
        try:
            self._write(self._data, parts, path, value)
        except BaseException:
            self._data = self._yaml.load(before)  # sections created on the way are gone again
            raise
        self._history.append(before)
        self._validate()
        return self.valid

    def _write(self, root: Any, parts: list[str | int], path: str, value: Any) -> None:
        node = root
        for part, following in zip(parts[:-1], parts[1:], strict=True):
            node = self._child(
                node, part, path, create=CommentedSeq if isinstance(following, int) else CommentedMap
            )
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last > len(node):
                raise ArgumentError(f"field path {path!r}: index {last} is past the end of the list")
            if last == len(node):
                node.append(_like(None, value))
            else:
                node[last] = _like(node[last], value)
        else:
            if not isinstance(node, dict):
                raise ArgumentError(f"field path {path!r}: {last!r} is not inside a mapping")
            node[last] = _like(node.get(last), value)

    def set_text(self, path: str, text: str) -> bool:
        """Write a one-line YAML value (``0.3``, ``[0.4, 0.5]``, ``{type: uniform, low: 0, high: 1}``).
        Text that is not YAML is refused (:class:`ArgumentError`) and the document is left as it was."""
        try:
            value = YAML(typ="safe").load(text)
        except YAMLError as exc:
            raise ArgumentError(f"{path}: not a YAML value: {' '.join(str(exc).split())}") from None
        return self.set(path, value)

    def delete(self, path: str) -> bool:
        """Remove the field or list entry at ``path``; validate; undoable."""
        parts = split_field_path(path)
        parent = self.get(format_field_path(parts[:-1])) if len(parts) > 1 else self._data
        last = parts[-1]
        if parent is None or (
            isinstance(last, int) and not (isinstance(parent, list) and last < len(parent))
        ):
            raise ArgumentError(f"field path {path!r}: nothing is written there")
        if isinstance(last, str) and (not isinstance(parent, dict) or last not in parent):
            raise ArgumentError(f"field path {path!r}: nothing is written there")
        self._history.append(self.text)
        del parent[last]
        self._validate()
        return self.valid

    def undo(self) -> bool:
        """Go back to the text before the last edit; ``False`` when there is nothing to undo."""
        if not self._history:
            return False
        self._load_text(self._history.pop())
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def _child(self, node: Any, part: str | int, path: str, create: type) -> Any:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ArgumentError(f"field path {path!r}: index {part} is past the end of the list")
            return node[part]
        if not isinstance(node, dict):
            raise ArgumentError(f"field path {path!r}: {part!r} is not inside a mapping")
        if node.get(part) is None:
            node[part] = create()
        return node[part]

    # -- saving ------------------------------------------------------------------------------------

    def save(self, path: str | Path | None = None) -> Path:
        """Write the document atomically (to ``path``, or where it was opened). An invalid document is
        refused with its problems, so a file that validated never gets overwritten with one that does not."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ArgumentError("save: the document was not opened from a file; name one")
        if not self.valid:
            problems = [ManifestProblem(str(target), 0, f, m) for f, ms in self.problems.items() for m in ms]
            raise ManifestError(problems)
        # Asset paths resolve against the manifest's folder: valid here must be valid there too.
        manifest = parse_manifest(self.text, file=str(target), base_dir=target.resolve().parent)
        target = target.resolve() if target.is_symlink() else target  # write the file a link points to
        write_atomically(target, self.text.encode("utf-8"))
        self.path, self.manifest = Path(path) if path is not None else self.path, manifest
        return target

    def main_fields(self) -> list[str]:
        """The field paths a window shows for editing: every leaf or distribution of the main sections
        that is written in the document (a distribution such as ``{type: uniform, ...}`` is one field)."""
        fields: list[str] = []

        def walk(node: Any, parts: list[str | int]) -> None:
            if isinstance(node, dict) and "type" not in node:
                for key, value in node.items():
                    walk(value, [*parts, str(key)])
            elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
                for i, value in enumerate(node):
                    walk(value, [*parts, i])
            else:
                fields.append(format_field_path(parts))

        if not isinstance(self._data, dict):
            return fields
        for section in MAIN_SECTIONS:
            if section in self._data:
                walk(self._data[section], [section])
        return fields


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
