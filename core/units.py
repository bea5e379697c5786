"""Numbers for people: byte sizes in binary units (what the CLI, the web UI and the reports show)."""
from __future__ import annotations


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: powers of 1024, named as such (KiB, MiB, GiB, TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
