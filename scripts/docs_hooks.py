"""MkDocs hooks (mkdocs.yml `hooks:`): the CLI reference page is `dspark ... --help` of every command, captured from
the command itself each time the site is built, so the page cannot drift from the options."""

from __future__ import annotations

MARKER = "<!-- the --help of every dspark command -->"
WIDTH = 110


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown


def cli_reference() -> str:
    """A section per command, in the order `dspark --help` lists them, holding what its `--help` prints."""
    import typer.main
    from typer.testing import CliRunner

    from dspark_cli import app

    runner = CliRunner()
    sections = []
    for path in _command_paths(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb"},
                               terminal_width=WIDTH, prog_name="dspark")
        if result.exit_code != 0:
            raise RuntimeError(f"`dspark {' '.join(path)} --help` failed: {result.output}")
        heading = "#" * min(len(path) + 2, 4)
        text = "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n")
        sections.append(f"{heading} {' '.join(('dspark', *path))}\n\n```text\n{text}\n```\n")
    return "\n".join(sections)


def _command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name in getattr(command, "commands", {}):
        paths += _command_paths(command.commands[name], (*path, name))
    return paths
