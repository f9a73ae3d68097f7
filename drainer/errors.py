"""The one exception tree of drainer, split by what should happen next.

    DrainerError                 anything drainer reports to a person
    ├── ConfigError              bad configuration or CLI input, an unknown adapter or
    │                            source type, an entry point that is no plugin: fix it, exit 2
    ├── StateError               the state directory cannot be read or written
    ├── SourceError              the metadata service failed this poll: retry later
    │   └── PayloadError         the service answered something off-schema
    └── AdapterError             a load balancer call failed
        ├── TransientAdapterError   unreachable, timed out, busy: retry later
        └── PermanentAdapterError   refused for good (no such server, no permission)

A plugin raises from its own branch: an adapter ``TransientAdapterError`` or
``PermanentAdapterError``, a source ``SourceError`` or ``PayloadError``. Low-level
errors (OSError, httpx errors, JSON errors) are translated once, at the boundary that
met them, with ``raise ... from exc``; nothing above that boundary catches anything but
``DrainerError``. All of them are importable from ``drainer``.
"""

from __future__ import annotations


class DrainerError(Exception):
    """Root of every error drainer raises on purpose; its message is for a person."""


class ConfigError(DrainerError):
    """The configuration or the command line is wrong; the message names what."""


class StateError(DrainerError):
    """The state directory cannot be read or written."""


class SourceError(DrainerError):
    """The event source failed this time; the next poll may succeed."""


class PayloadError(SourceError):
    """The event source answered, but not in the documented schema."""


class AdapterError(DrainerError):
    """A load-balancer operation failed. The message does not name the load balancer:
    whoever calls the adapter puts its name in front (``lb1: drain: ...``)."""


class TransientAdapterError(AdapterError):
    """Unreachable, timed out or busy: the same call may succeed later."""


class PermanentAdapterError(AdapterError):
    """Refused in a way a retry cannot fix (no such server, permission denied)."""
