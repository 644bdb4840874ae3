"""Regenerate the error catalogue of docs/operations.md ("Every raise, by file"): an ``ast`` walk over the
packages listing each ``raise X("message")`` with the message's source, in file order (no line numbers, so
the table changes only when a message does; ``tests/ops/test_bad_input.py`` checks it is current).

    python docs/error_catalogue.py          # rewrites the section in place
    python docs/error_catalogue.py --print  # prints the tables instead
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "Every raise, by file"


def tables() -> str:
    out = []
    for pkg in ("audio", "core_attn", "genomics", "vision"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            src = path.read_text()
            rows = []
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                    f = node.exc.func
                    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                    a = node.exc.args[0]
                    if name is None or not isinstance(a, (ast.Constant, ast.JoinedStr, ast.BinOp, ast.Name)):
                        continue
                    if isinstance(a, ast.Constant) and not isinstance(a.value, str):
                        continue
                    seg = " ".join(ast.get_source_segment(src, a).split())
                    if len(seg) > 230:
                        seg = seg[:227] + "..."
                    rows.append((node.lineno, name, seg))
            if rows:
                rel = path.relative_to(ROOT).as_posix()
                out.append(f"**`{rel}`**\n\n| type | message (source) |\n|---|---|")
                for _, name, seg in sorted(rows):
                    cell = f"`{seg}`" if "`" not in seg else seg
                    out.append(f"| {name} | {cell} |")
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    text = tables()
    if "--print" in sys.argv:
        print(text, end="")
        return
    doc = ROOT / "docs" / "operations.md"
    old = doc.read_text()
    head, sep, _ = old.partition(MARK)
    if not sep:
        raise SystemExit(f"{doc}: no line starting with {MARK!r}")
    first = old[len(head):].split("\n", 1)[0]
    doc.write_text(head + first + "\n\n" + text)


if __name__ == "__main__":
    main()
