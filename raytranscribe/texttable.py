"""The tables of the command line's reads (``status``, ``tasks``, ``show``): box-drawn text, each
column as wide as its content, long cells folded when the table would not fit the width.

Plain text because rich, importing and laying out, was a seventh of what ``status`` cost to answer
(bench/cli_startup.py); rich stays for what only it does, the live progress of ``run`` and ``backfill``.
No styles and no markup: what a cell holds is printed as it is (a failure reason in brackets too).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import NamedTuple

WIDTH = 160  # off a terminal (a pipe, a file, a job's log): lines no longer than this
_MIN_FOLDED = 8  # a folded column keeps at least this many characters (or its header's)


class _Column(NamedTuple):
    header: str
    right: bool  # numbers line up on the right
    fold: bool  # long text wraps inside the column instead of widening the table


class Table:
    """``Table("tasks")``, then :meth:`column` and :meth:`row`; ``str(table)`` or :meth:`render`."""

    def __init__(self, title: str | None = None, *, show_header: bool = True) -> None:
        self.title = title
        self.show_header = show_header
        self._columns: list[_Column] = []
        self._rows: list[tuple[str, ...]] = []

    def column(self, header: str, *, right: bool = False, fold: bool = True) -> None:
        self._columns.append(_Column(header, right, fold))

    def row(self, *cells: str) -> None:
        if len(cells) != len(self._columns):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self._columns)} columns")
        self._rows.append(tuple(cells))

    def render(self, width: int | None = None) -> str:
        """The table in at most ``width`` characters a line (default: the terminal's, else WIDTH),
        when its headers allow."""
        widths = self._widths(width or terminal_width())
        lines: list[str] = []
        total = sum(widths) + 3 * len(widths) + 1
        if self.title:
            lines.append(self.title.center(total).rstrip())
        heavy = self.show_header
        lines.append(_rule(widths, "┏━┳┓" if heavy else "┌─┬┐"))
        if self.show_header:
            lines.extend(self._line([c.header for c in self._columns], widths, "┃"))
            lines.append(_rule(widths, "┡━╇┩"))
        for cells in self._rows:
            lines.extend(self._line(list(cells), widths, "│"))
        lines.append(_rule(widths, "└─┴┘"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def _widths(self, width: int) -> list[int]:
        """Each column's natural width; while the table is too wide, the widest folding column
        gives up a character (down to its floor), so the long ones share the room left."""
        widths = [
            max([len(c.header), *(len(part) for cells in self._rows for part in cells[i].splitlines() or [""])])
            for i, c in enumerate(self._columns)
        ]
        floors = [max(len(c.header), min(_MIN_FOLDED, w)) if c.fold else w for c, w in zip(self._columns, widths)]
        excess = sum(widths) + 3 * len(widths) + 1 - width
        while excess > 0:
            shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        return widths

    def _line(self, cells: list[str], widths: list[int], edge: str) -> list[str]:
        """One table row as text lines: each cell folded to its column's width."""
        parts = [_fold(cell, w) for cell, w in zip(cells, widths)]
        height = max(len(p) for p in parts)
        out = []
        for k in range(height):
            texts = []
            for part, w, column in zip(parts, widths, self._columns):
                text = part[k] if k < len(part) else ""
                texts.append(text.rjust(w) if column.right else text.ljust(w))
            out.append(f"{edge} " + f" {edge} ".join(texts) + f" {edge}")
        return out


def _fold(cell: str, width: int) -> list[str]:
    """A cell's lines at most ``width`` long: broken between words where it can, inside a long word
    (a URI) where it must; its own line breaks kept."""
    lines: list[str] = []
    for line in cell.splitlines() or [""]:
        if len(line) <= width:
            lines.append(line)
        else:
            lines.extend(textwrap.wrap(line, width, break_on_hyphens=False) or [""])
    return lines


def _rule(widths: list[int], box: str) -> str:
    left, fill, mid, right = box
    return left + mid.join(fill * (w + 2) for w in widths) + right


def terminal_width() -> int:
    """The terminal's width when the output is one, else :data:`WIDTH`."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((WIDTH, 24)).columns
    return WIDTH
