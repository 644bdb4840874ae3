"""``python -m core_attn.attention``: print the variant table of README.md (the block between its
``<!-- variants:start -->`` and ``<!-- variants:end -->`` markers), generated from the registered classes."""

from __future__ import annotations

import argparse
import sys

from core_attn.registry import variant_table


def main(argv: list[str] | None = None) -> int:
    """Print :func:`core_attn.registry.variant_table`; takes no options but ``--help``."""
    argparse.ArgumentParser(prog="python -m core_attn.attention", description=__doc__).parse_args(argv)
    print(variant_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
