"""Byte counts as text: the one formatter (bottom layer; the CLI and the doctor's messages)."""

from __future__ import annotations

__all__ = ["format_bytes"]

_BINARY = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def format_bytes(value: float | None, *, compact: bool = False) -> str:
    """A byte count in binary units.

    Args:
        value: Bytes, or None ("-").
        compact: The doctor's message form, "12.3MB" (or "1.5GB" from 1 GiB up; binary units
            written as MB/GB); otherwise the table form, "12.3 MiB", down to "512 B".
    """
    if value is None:
        return "-"
    if compact:
        if value >= 2**30:
            return f"{value / 2**30:.1f}GB"
        return f"{value / 2**20:.1f}MB"
    for unit, size in _BINARY:
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:g} B" if isinstance(value, float) else f"{value} B"
