"""What the command line prints: its own words may carry Rich markup; text that users or files supplied (model
specs, paths, prompts, stored values, error messages quoting them) is always printed as it is.

`literal` makes such text safe inside a markup string: markup escaped, and control characters (a terminal's escape
sequences among them) and lone surrogates shown as Python escapes (`\\x1b`, `\\ud800`) instead of being sent to the
terminal. `cell` does the same for a table cell, as a `Text` that is never parsed for markup.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

#: C0 controls but tab and newline, DEL, C1 controls, and surrogates (not encodable: printing one would fail)
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def visible(value: object) -> str:
    """`value` as text with every control character and lone surrogate written as its escape."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape", "backslashreplace").decode()
                            if not 0xD800 <= ord(match.group()) <= 0xDFFF else f"\\u{ord(match.group()):04x}",
                            str(value))


def literal(value: object) -> str:
    """`value` for a markup string: printed exactly as `visible` shows it."""
    return escape(visible(value))


def cell(value: object) -> Text:
    """`value` for a table cell (or a title): never markup, control characters visible."""
    return Text(visible(value))
