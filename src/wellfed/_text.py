"""Text that must survive a terminal: code with long comments, settings with long reasons.

A terminal wraps a line that is too long wherever the column runs out, often mid-word, and a
copy from it can keep that break: a wrapped comment then pastes as a line of code (issue 15).
The helpers here break such lines themselves, at word boundaries, within ``CODE_WIDTH``
columns: a comment continues as ``# ...`` lines, a reason under its own column.
"""

from __future__ import annotations

import textwrap

__all__ = ["CODE_WIDTH", "hang", "wrap_code"]

#: Columns the printed code and settings fit in: PEP 8's 79, so an 80-column terminal (the
#: narrowest in common use) shows each line whole, and the code pastes within any project's
#: line-length limit.
CODE_WIDTH = 79

#: A comment beside its code needs at least this many columns, else it goes above the code.
_MIN_COMMENT = 30

_COMMENT = "  # "


def _words(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken at spaces only (a word longer
    than ``width``, a path say, stays whole on its own line)."""
    return textwrap.wrap(text, max(1, width), break_long_words=False, break_on_hyphens=False) or [
        ""
    ]


def hang(head: str, text: str, width: int = CODE_WIDTH) -> list[str]:
    """``head`` then ``text``, wrapped at word boundaries within ``width`` columns, the further
    lines indented to where ``text`` starts.

    Example:
        >>> hang("  num_workers  ", "2  (auto: 2 usable CPUs)", width=30)
        ['  num_workers  2  (auto: 2', '               usable CPUs)']
    """
    lines = _words(text, width - len(head))
    pad = " " * len(head)
    return [head + lines[0], *(pad + line for line in lines[1:])]


def _split_comment(line: str) -> tuple[str, str] | None:
    """(code, comment text) of a generated line ``code  # comment``, or None without one.

    Only wellfed's own generated code passes through here: its values are reprs of ints,
    bools and short strings, so the first ``"  # "`` starts the comment.
    """
    code, sep, comment = line.partition(_COMMENT)
    if not sep or not code.strip():
        return None
    return code, comment


def wrap_code(code: str, width: int = CODE_WIDTH) -> str:
    """Python source with every over-long comment wrapped at word boundaries as ``#`` lines.

    A line ``code  # comment`` wider than ``width`` keeps the code and continues the comment
    on ``#`` lines aligned beneath it; where the code leaves under 30 columns for it, the
    comment moves above the code as ``#`` lines at the code's indent. A comment line of its
    own continues at its indent. Code without a comment is never touched, so the result
    compiles exactly when the input does.

    Args:
        code: Source text, lines separated by ``\\n``.
        width: Columns each line should fit in (a single word wider than that stays whole).

    Returns:
        The source, every line of it within ``width`` columns where words allow.
    """
    out: list[str] = []
    for line in code.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            out.extend(f"{indent}# {part}" for part in _words(text, width - len(indent) - 2))
            continue
        split = _split_comment(line)
        if split is None:
            out.append(line)
            continue
        head, text = split
        beside = width - len(head) - len(_COMMENT)
        if beside >= _MIN_COMMENT:
            parts = _words(text, beside)
            pad = " " * (len(head) + 2)
            out.append(f"{head}{_COMMENT}{parts[0]}")
            out.extend(f"{pad}# {part}" for part in parts[1:])
        else:
            out.extend(f"{indent}# {part}" for part in _words(text, width - len(indent) - 2))
            out.append(head)
    return "\n".join(out)
