"""The layout half of `terraform fmt`, for machines without a terraform binary.

It re-implements hclwrite's `formatIndent` and `formatCells` (hashicorp/hcl, hclwrite/format.go):
each line is indented two spaces per open bracket level (counted per line, with the same
indent stack), and on runs of consecutive lines that assign a whole single-line expression
(`key = value`), the `=` signs line up one space after the longest key; trailing comments on
consecutive lines line up likewise. Spacing between tokens inside a line (hclwrite's
`formatSpaces`) is not re-implemented: the files keep the canonical single spaces by hand, and
CI hosts with terraform run the real `terraform fmt -check -recursive` (.github/workflows/iac.yml).

    python tests/iac/hclfmt.py --check FILE...   # exit 1 and list files that differ
    python tests/iac/hclfmt.py --write FILE...   # rewrite them
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

OPEN = "{[("
CLOSE = "}])"


@dataclass
class Line:
    text: str  # without the leading indentation and the newline
    net: int  # bracket change over the whole line (lead + assign), heredocs aside
    eq: int | None  # index in text of the assignment's "=" when the RHS is a whole expression
    comment: int | None  # index in text of a trailing comment


def scan(line: str) -> tuple[list[tuple[int, str]], int | None]:
    """Bracket-like events (index, char) of one line outside strings, and where a trailing
    comment starts. `${` and `%{` count as openers, as hclwrite's TemplateInterp/Control do."""
    events: list[tuple[int, str]] = []
    comment = None
    i, n = 0, len(line)
    # A stack of contexts: "code" or "str"; template interpolation re-enters code.
    stack = ["code"]
    while i < n:
        c = line[i]
        ctx = stack[-1]
        if ctx == "str":
            if c == "\\":
                i += 2
                continue
            if c == '"':
                stack.pop()
            elif line.startswith("${", i) or line.startswith("%{", i):
                events.append((i, "{"))
                stack.append("interp")
                i += 2
                continue
            i += 1
            continue
        # code or interp
        if c == '"':
            stack.append("str")
        elif c == "#" or line.startswith("//", i):
            comment = i
            break
        elif c in OPEN:
            events.append((i, c))
            if ctx == "interp" and c == "{":
                stack.append("code-brace")
        elif c in CLOSE:
            if ctx == "interp" and c == "}":
                stack.pop()
            elif ctx == "code-brace" and c == "}":
                stack.pop()
            events.append((i, c))
        i += 1
    return events, comment


def assignment_at(text: str, events: list[tuple[int, str]], comment: int | None) -> int | None:
    """Index of the first `=` token (not ==, =>, !=, <=, >=) outside strings, when what
    follows it has balanced brackets (hclwrite moves only those into the "assign" cell)."""
    end = comment if comment is not None else len(text)
    in_str = False
    depth_interp = 0
    i = 0
    while i < end:
        c = text[i]
        if in_str:
            if c == "\\":
                i += 2
                continue
            if c == '"' and depth_interp == 0:
                in_str = False
            i += 1
            continue
        if c == '"':
            in_str = True
        elif c == "=" and i > 0:
            prev = text[i - 1]
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if prev not in "=!<>" and nxt not in "=>":
                net = sum(1 if ch in OPEN else -1 for (j, ch) in events if j >= i)
                return i if net == 0 else None
        i += 1
    return None


def parse(source: str) -> list[Line | None]:
    lines: list[Line | None] = []
    for raw in source.split("\n"):
        text = raw.strip()
        if not text:
            lines.append(None)
            continue
        events, comment = scan(text)
        net = sum(1 if ch in OPEN else -1 for (_, ch) in events)
        eq = assignment_at(text, events, comment)
        # A comment-only line is all "lead": it has no trailing-comment cell.
        trailing = comment if comment not in (None, 0) else None
        lines.append(Line(text=text, net=net, eq=eq, comment=trailing))
    return lines


def format_hcl(source: str) -> str:
    if "<<" in source:
        raise ValueError("heredocs are not handled by this formatter; use terraform fmt")
    lines = parse(source)
    indents: list[int] = []
    indent_of: list[int] = []
    for line in lines:
        if line is None:
            indent_of.append(0)
            continue
        if line.net > 0:
            indent_of.append(2 * len(indents))
            indents.append(line.net)
        elif line.net < 0:
            closed = -line.net
            while closed > 0 and indents:
                if closed > indents[-1]:
                    closed -= indents.pop()
                elif closed < indents[-1]:
                    indents[-1] -= closed
                    closed = 0
                else:
                    indents.pop()
                    closed = 0
            indent_of.append(2 * len(indents))
        else:
            indent_of.append(2 * len(indents))

    # Cells: lead (key), assign (= value), comment.
    leads: list[str] = []
    assigns: list[str | None] = []
    comments: list[str | None] = []
    for line in lines:
        if line is None:
            leads.append("")
            assigns.append(None)
            comments.append(None)
            continue
        body = line.text
        comment = None
        if line.comment is not None:
            comment = body[line.comment :].strip()
            body = body[: line.comment].rstrip()
        if line.eq is not None:
            leads.append(body[: line.eq].rstrip())
            assigns.append("= " + body[line.eq + 1 :].strip())
        else:
            leads.append(body)
            assigns.append(None)
        comments.append(comment)

    # Align "=" over chains of consecutive assignment lines.
    widths = [indent_of[i] + len(leads[i]) for i in range(len(lines))]
    eq_col: list[int | None] = [None] * len(lines)
    i = 0
    while i < len(lines):
        if assigns[i] is None:
            i += 1
            continue
        j = i
        while j < len(lines) and assigns[j] is not None:
            j += 1
        widest = max(widths[i:j])
        for k in range(i, j):
            eq_col[k] = widest + 1
        i = j

    rendered_wo_comment: list[str] = []
    for k, line in enumerate(lines):
        if line is None:
            rendered_wo_comment.append("")
            continue
        text = " " * indent_of[k] + leads[k]
        if assigns[k] is not None:
            text = text + " " * (eq_col[k] - widths[k]) + assigns[k]
        rendered_wo_comment.append(text)

    # Align trailing comments over chains of consecutive lines that have one.
    out = list(rendered_wo_comment)
    i = 0
    while i < len(lines):
        if comments[i] is None:
            i += 1
            continue
        j = i
        while j < len(lines) and comments[j] is not None:
            j += 1
        widest = max(len(rendered_wo_comment[k]) for k in range(i, j))
        for k in range(i, j):
            out[k] = rendered_wo_comment[k] + " " * (widest - len(rendered_wo_comment[k]) + 1) + comments[k]
        i = j
    return "\n".join(out)


def main(argv: list[str]) -> int:
    mode, files = argv[0], argv[1:]
    bad = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        formatted = format_hcl(source)
        if formatted != source:
            bad.append(path)
            if mode == "--write":
                with open(path, "w", encoding="utf-8") as f:
                    f.write(formatted)
    for path in bad:
        print(path)
    return 1 if bad and mode == "--check" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
