"""The one byte formatter: what the CLI prints and what error messages say."""

from __future__ import annotations


def format_size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
