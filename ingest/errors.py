"""Errors the ingest driver must not retry."""

from __future__ import annotations


class NotRetryable(Exception):
    """A failure that depends only on the input files (a truncated, audio-only or undecodable
    video, an unparseable chat log): running the part again, on any actor, fails the same way."""
