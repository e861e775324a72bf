"""Picklable toy datasets for tests that spawn workers (module level, so spawn can import them)."""

from __future__ import annotations
