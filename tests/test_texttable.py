"""The reading commands' tables: sized to their content, folded to the width, printed as given."""

from __future__ import annotations

import pytest

from raytranscribe.texttable import Table


def _lines(table: Table, width: int) -> list[str]:
    return table.render(width).splitlines()


def test_columns_fit_their_content_and_numbers_line_up_right():
    t = Table("tasks")
    t.column("status")
    t.column("count", right=True)
    t.row("pending", "7")
    t.row("completed", "12345")
    assert _lines(t, 160) == [
        "        tasks",
        "┏━━━━━━━━━━━┳━━━━━━━┓",
        "┃ status    ┃ count ┃",
        "┡━━━━━━━━━━━╇━━━━━━━┩",
        "│ pending   │     7 │",
        "│ completed │ 12345 │",
        "└───────────┴───────┘",
    ]


def test_a_table_too_wide_folds_its_longest_cells_and_keeps_every_character():
    uri = "s3://bucket/" + "calls/2026/" * 12 + "call.wav"
    reason = "download failed: HTTP 403 [AccessDenied] the bucket policy refuses this role's GetObject"
    t = Table("tasks (all)")
    for header in ("id", "status", "input", "failure reason"):
        t.column(header)
    t.row("1", "dead", uri, reason)
    t.row("2", "completed", "s3://b/a.wav", "")
    lines = _lines(t, 80)
    assert max(len(line) for line in lines) <= 80
    assert {len(line) for line in lines[1:]} == {80}  # every row as wide as the borders
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in lines if line.startswith("│")]
    assert "".join(c[2] for c in cells[:-1]) == uri  # folded inside the long word, nothing lost
    assert " ".join(c[3] for c in cells[:-1] if c[3]) == reason  # between words, brackets as written
    assert cells[0][:2] == ["1", "dead"] and cells[-1][:3] == ["2", "completed", "s3://b/a.wav"]


def test_without_header_and_with_line_breaks_in_a_cell():
    t = Table("task 3", show_header=False)
    t.column("field", fold=False)
    t.column("value")
    t.row("outputs", "s3://b/out/a.json\ns3://b/out/a.srt")
    t.row("status", "completed")
    assert _lines(t, 160)[1:] == [
        "┌─────────┬───────────────────┐",
        "│ outputs │ s3://b/out/a.json │",
        "│         │ s3://b/out/a.srt  │",
        "│ status  │ completed         │",
        "└─────────┴───────────────────┘",
    ]


def test_headers_are_never_folded_even_when_the_width_is_too_small():
    t = Table()
    t.column("engine/model")
    t.column("input")
    t.row("faster-whisper/large-v3", "s3://bucket/a-long-input-name.wav")
    lines = _lines(t, 20)
    assert "┃ engine/model ┃ input    ┃" in lines  # each column keeps its header (and 8 characters)


def test_a_row_must_fill_every_column():
    t = Table()
    t.column("a")
    with pytest.raises(ValueError, match="2 cells in a table of 1 columns"):
        t.row("x", "y")
