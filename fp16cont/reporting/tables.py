"""Plain-text and Markdown tables for reports.

Example:
    >>> print(render_table(["a", "b"], [[1, 2.5]]))
    a | b
    --+----
    1 | 2.5
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render_table", "format_bytes"]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """Render rows as an aligned text table (or a Markdown table).

    Args:
        headers: Column titles.
        rows: One sequence of cells per row; cells are converted with ``str``.
        markdown: Emit GitHub Markdown (``| a | b |``) instead of plain text.

    Returns:
        The table as one string, without a trailing newline.

    Example:
        >>> render_table(["x"], [[1]], markdown=True).splitlines()[1]
        '| --- |'
    """
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "| " + " | ".join("---" for _ in headers) + " |")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    fmt.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(fmt)


def format_bytes(n: int) -> str:
    """Format a byte count with a binary unit.

    Args:
        n: Number of bytes.

    Returns:
        For example ``"1.5 KiB"``.

    Example:
        >>> format_bytes(1536)
        '1.5 KiB'
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
