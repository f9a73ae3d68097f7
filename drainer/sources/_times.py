"""Times as metadata services write them: RFC 1123 (Azure's NotBefore), AWS's
``21 Jan 2019 09:00:43 GMT`` (RFC 1123 without the weekday), ISO 8601 / RFC 3339."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["parse_time"]

# ISO 8601 as IMDS and .NET write it; normalised for datetime.fromisoformat, which on
# Python 3.10 takes neither "Z", nor a fraction of other than 3 or 6 digits, nor "+0000".
_ISO = re.compile(
    r"(?P<stamp>\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2})?)"
    r"(?:[.,](?P<fraction>\d+))?\s*(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def _iso(text: str) -> str:
    match = _ISO.fullmatch(text)
    if match is None:
        return text  # fromisoformat says what it cannot read
    out = match["stamp"].replace("t", "T")
    if match["fraction"]:
        out += "." + match["fraction"][:6].ljust(6, "0")  # datetime keeps microseconds
    zone = match["zone"] or ""
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif zone and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:] or '00'}"
    return out + zone


def parse_time(text: str) -> float:
    """RFC 1123 or ISO 8601 (any offset, ``Z``, fractional seconds); no offset means UTC."""
    try:
        # parsedate ignores the weekday: Microsoft's own sample has a wrong one.
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        moment = datetime.fromisoformat(_iso(text.strip()))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
