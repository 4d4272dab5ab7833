"""The root of every error a user can cause or fix, and the settings error.

A `WaxstreamsError` ends the job with its message alone (dataflows/skeleton.py `flow_from_env`),
so the message is one line naming the setting or cause and the fix. Each subclass also keeps
the built-in base it had (RuntimeError, ValueError), so `except RuntimeError` still holds.
"""

from __future__ import annotations


class WaxstreamsError(Exception):
    """A user-facing error: its message is one line naming the setting or cause and the fix."""


class ConfigError(WaxstreamsError, ValueError):
    """A setting is missing or wrong; the message names it and the fix."""
