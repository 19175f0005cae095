"""Command-line options whose default and help come from the library's config dataclasses, so the CLI can
never disagree with the library (or with the Dagster config, which reads the same declarations)."""

from __future__ import annotations

import typer

from dspark_core.settings import bounds_of, default_of, help_of


def core_option(cls: type, name: str, *flags: str, **kwargs) -> typer.models.OptionInfo:
    """A typer option for setting `name` of config dataclass `cls`: its declared default, help text and range (a
    value outside it is refused before the command runs, naming the option)."""
    help_text = help_of(cls, name)
    bounds = bounds_of(cls, name)
    limits = {key: bounds[key] for key in ("min", "max") if key in bounds}  # (open bounds: the dataclass checks)
    if "choices" in bounds:
        choices = tuple(bounds["choices"])
        help_text += f" ({', '.join(map(str, choices))})" if help_text else ""
        if all(isinstance(choice, str) for choice in choices) and "parser" not in kwargs:
            kwargs["parser"] = one_of(choices)
    return typer.Option(default_of(cls, name), *flags, help=help_text + "." if help_text else None, **limits, **kwargs)


def one_of(choices: tuple[str, ...]):
    """A typer parser that refuses anything but `choices` before the command runs (typer names the option)."""
    def parse(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    return parse


def comma_words(value: str | None) -> tuple[str, ...]:
    """'math, code' -> ('math', 'code'); empty -> ()."""
    return tuple(word.strip() for word in (value or "").split(",") if word.strip())


def comma_ints(value: str | None) -> tuple[int, ...] | None:
    """'1,8,14' -> (1, 8, 14); empty -> None."""
    if not value:
        return None
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,8,14") from None


def report_table(title: str, columns: list[str], rows: list[list], digits: int = 2):
    """A right-aligned rich table of a report's (columns, rows): None as '–', floats with `digits` decimals, the
    rest as text (never read as markup)."""
    from rich.table import Table

    from dspark_cli.output import cell

    table = Table(title=cell(title))
    for column in columns:
        table.add_column(cell(column), justify="right")
    for row in rows:
        table.add_row(*(cell("–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else v) for v in row))
    return table


def transposed(columns: list[str], rows: list[list]) -> tuple[list[str], list[list]]:
    """A (columns, rows) table with rows and columns swapped: the first column's values become the header."""
    return [columns[0], *(str(row[0]) for row in rows)], [[name, *(row[i] for row in rows)]
                                                           for i, name in enumerate(columns[1:], start=1)]
