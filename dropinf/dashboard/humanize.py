"""Sizes and durations in words, for captions and estimates."""

from __future__ import annotations


def human_bytes(size: float) -> str:
    """A byte count in B / KB / MB / GB / TB (powers of 1024), e.g. ``1.5 MB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"


def human_seconds(seconds: float) -> str:
    """A duration as ``< 1 s``, ``42 s``, ``3 min 5 s`` or ``2 h 10 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
