"""TOML as data: reading a file into a dict (one error line naming the file when it cannot be
read or parsed) and writing values and tables back. Nothing in a file is evaluated."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeprune.errors import EdgepruneError


def _tomllib() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise EdgepruneError("reading TOML needs Python 3.11+ or the tomli package "
                                 "(pip install tomli)") from None
    return tomllib


def read_toml(path: Path | str, what: str = "file") -> dict[str, Any]:
    """The TOML document in `path` as a dict; EdgepruneError naming the `what` and file when
    it cannot be read, is not UTF-8 text (as TOML must be) or is not valid TOML."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EdgepruneError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgepruneError(f"{what} {path} is not UTF-8 text, as TOML must be (byte "
                             f"{e.start} is 0x{raw[e.start]:02x}); save it as UTF-8") from None
    toml = _tomllib()
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise EdgepruneError(f"{path} is not valid TOML: {e}") from None


def _string(s: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
               "\r": "\\r"}
    return '"' + "".join(escapes.get(c, f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f"
                                     else c) for c in s) + '"'


def toml_value(value: Any) -> str:
    """One TOML value: booleans, numbers (nan and inf included), strings, arrays and inline
    tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _string(key)


def dumps(document: Mapping[str, Any], header: str = "") -> str:
    """`document` as TOML: `key = value` lines in order (None values commented out), then a
    `[[key]]` array of tables for every list of tables."""
    lines = [header] if header else []
    tables = {k: v for k, v in document.items()
              if isinstance(v, list) and v and all(isinstance(t, Mapping) for t in v)}
    for key, value in document.items():
        if key in tables:
            continue
        lines.append(f"# {key} =  (not set)" if value is None else
                     f"{_key(key)} = {toml_value(value)}")
    for key, items in tables.items():
        for table in items:
            lines += ["", f"[[{_key(key)}]]"]
            lines += [f"{_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
