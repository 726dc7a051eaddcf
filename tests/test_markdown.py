"""Markdown tables: padded like the seed report's, or compact; no cell breaks a table."""

from crackseg.markdown import markdown_table


def test_a_padded_table_lines_up_its_columns_at_the_minimum_width():
    assert markdown_table(("Set", "Positives"), [("Train", 14), ("**Sum**", 20)], 11) == [
        "| Set         | Positives   |",
        "| ----------- | ----------- |",
        "| Train       | 14          |",
        "| **Sum**     | 20          |",
    ]
    wide = markdown_table(("a",), [("a cell wider than eleven",)], 11)
    assert wide[1] == "| " + "-" * len("a cell wider than eleven") + " |"


def test_a_compact_table_leaves_its_cells_unpadded():
    assert markdown_table(("dilate", "n"), [(3, 2), (5, None)]) == [
        "| dilate | n |",
        "| --- | --- |",
        "| 3 | 2 |",
        "| 5 | None |",
    ]


def test_a_bar_or_line_break_in_a_cell_does_not_break_the_table():
    lines = markdown_table(("job", "error"), [("a|b", "one\ntwo")])
    assert lines[2] == "| a\\|b | one two |"
    assert all(line.count(" | ") == 1 for line in lines)
