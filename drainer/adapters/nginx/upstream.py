"""The upstream file as text: find the ``server`` lines of ``upstream`` blocks and set
``down`` on one of them. Pure functions, no I/O: the whole nginx adapter's editing.

Only one-line ``server ...;`` directives inside ``upstream NAME {`` blocks are read, and
an edit changes nothing but the ``down`` parameter of one line (every other byte is kept).
A shape drainer does not edit (an unclosed block, a ``server`` over several lines, a
region marker missing) is a ValueError naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ServerLine", "find_server", "find_servers", "is_down", "set_down"]

_UPSTREAM = re.compile(r"^\s*upstream\s+(\S+)\s*\{\s*(#.*)?$")
_CLOSE = re.compile(r"^\s*\}\s*(#.*)?$")
_SERVER = re.compile(r"^(\s*)server\s+([^\s;#]+)((?:\s+[^\s;#]+)*)\s*;(\s*#.*)?$")


@dataclass(frozen=True)
class ServerLine:
    upstream: str
    address: str
    index: int  # line number in the text, from 0
    text: str  # the line without its newline
    down: bool


def _scope(text: str, region: str | None) -> tuple[int, int]:
    """The line range [start, end) drainer may read and edit."""
    lines = text.splitlines()
    if region is None:
        return 0, len(lines)
    begin = [i for i, line in enumerate(lines) if line.strip() == f"# drainer:begin {region}"]
    end = [i for i, line in enumerate(lines) if line.strip() == f"# drainer:end {region}"]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise ValueError(
            f"expected one '# drainer:begin {region}' line and one '# drainer:end {region}' "
            f"line after it (found {len(begin)} and {len(end)})"
        )
    return begin[0] + 1, end[0]


def find_servers(text: str, region: str | None = None) -> list[ServerLine]:
    """Every one-line ``server ...;`` inside an ``upstream NAME {`` block of the scope.

    Raises ValueError for a shape drainer does not edit (an unclosed block, or a
    ``server`` directive that is not on one line of its own).
    """
    start, end = _scope(text, region)
    lines = text.splitlines()
    found: list[ServerLine] = []
    upstream: str | None = None
    for i in range(start, end):
        line = lines[i]
        if upstream is None:
            opened = _UPSTREAM.match(line)
            if opened:
                upstream = opened.group(1)
            continue
        if _CLOSE.match(line):
            upstream = None
            continue
        stripped = line.strip()
        if not (stripped.startswith("server ") or stripped.startswith("server\t")):
            continue
        match = _SERVER.match(line)
        if not match:
            raise ValueError(f"line {i + 1}: write each server directive on one line: {stripped}")
        params = match.group(3).split()
        found.append(ServerLine(upstream, match.group(2), i, line, "down" in params))
    if upstream is not None:
        raise ValueError(f"upstream {upstream} is not closed by a '}}' line of its own")
    return found


def is_down(line: str) -> bool:
    match = _SERVER.match(line)
    return match is not None and "down" in match.group(3).split()


def find_server(text: str, *, upstream: str, address: str, region: str | None) -> ServerLine:
    matches = [
        s for s in find_servers(text, region) if (s.upstream, s.address) == (upstream, address)
    ]
    if len(matches) != 1:
        what = "no line" if not matches else f"{len(matches)} lines"
        raise ValueError(f"{what} 'server {address} ...;' in upstream {upstream}")
    return matches[0]


def set_down(
    text: str, *, upstream: str, address: str, down: bool, region: str | None = None
) -> str:
    """The text with ``down`` added to or removed from one server line; nothing else changes."""
    line = find_server(text, upstream=upstream, address=address, region=region)
    if line.down == down:
        return text
    match = _SERVER.match(line.text)
    assert match is not None
    indent, addr, params, comment = match.groups()
    kept = [p for p in params.split() if p != "down"] + (["down"] if down else [])
    new = f"{indent}server {addr}{''.join(' ' + p for p in kept)};{comment or ''}"
    lines = text.splitlines(keepends=True)
    ending = lines[line.index][len(line.text) :]
    lines[line.index] = new + ending
    return "".join(lines)
