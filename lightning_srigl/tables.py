"""Rich tables that fit the terminal: numbers are never cut, long names fold.

Rich shrinks a table that is wider than the console by wrapping or cutting cells. Here every column
is at least as wide as its longest cell (only its header wraps, at spaces), and the columns named in
``fold`` (layer names, which have no spaces to wrap at) get the width that is left, folding a long
name onto several lines. Every table of the package (benchmark, acceleration report, topology
report, demo) is built here and printed on [`terminal_console`][lightning_srigl.tables.terminal_console];
the tables written into ``docs/`` are built by [`markdown_table`][lightning_srigl.tables.markdown_table].
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence

from rich.console import Console
from rich.table import Table

FOLD_MIN_WIDTH = 12  # a folded name keeps at least this many characters per line
LOG_WIDTH = 100  # columns when the output is a file or a pipe and $COLUMNS is unset


def terminal_console() -> Console:
    """A rich console as wide as the terminal (``$COLUMNS`` wins); 100 columns when writing to a file
    or a pipe, where rich would otherwise assume 80."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=LOG_WIDTH)
    return console


def fitted_table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    left: Collection[str] = (),
    fold: Collection[str] = (),
) -> Table:
    """A table of ``rows`` (cells as strings, one per header) for a console ``width`` columns wide.

    Args:
        title: printed above the table.
        headers: column headers; they wrap at spaces when the console is narrow.
        rows: the cells, each row as long as ``headers``.
        width: the console's width (``console.width``).
        left: headers of the left-aligned columns (the others are right-aligned, for numbers).
        fold: headers of the columns that fold a long cell onto several lines (e.g. layer names).
    """
    longest = [max([len(row[i]) for row in rows], default=0) for i in range(len(headers))]
    natural = [max(n, len(header)) for n, header in zip(longest, headers)]  # headers on one line
    needed = [max([n] + [len(word) for word in header.split()]) for n, header in zip(longest, headers)]
    borders = 3 * len(headers) + 1  # one space each side of a cell and one rule between cells
    if sum(natural) + borders <= width:
        widths = natural
    else:  # wrap the headers; the fold columns share what is left
        fixed = sum(n for n, header in zip(needed, headers) if header not in fold)
        folds = sum(header in fold for header in headers)
        share = max(FOLD_MIN_WIDTH, (width - fixed - borders) // max(folds, 1))
        widths = [min(n, share) if header in fold else n for n, header in zip(natural, headers)]
        widths = [w if header in fold else n for w, n, header in zip(widths, needed, headers)]
    table = Table(title=title)
    for w, header in zip(widths, headers):
        justify = "left" if header in left or header in fold else "right"
        table.add_column(header, justify=justify, width=w, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (cells as strings, one per header) as a GitHub-flavoured markdown table, one line per row.

    A ``|`` inside a header or cell (``max |Δ logit|``) is escaped as ``\\|``: unescaped, it splits the cell
    and the whole table renders as plain text.
    """

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *map(line, rows)]) + "\n"
