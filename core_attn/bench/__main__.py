"""``python -m core_attn.bench``: see :mod:`core_attn.bench.runner`."""

from core_attn.bench.runner import main
from core_attn.errors import run_main

if __name__ == "__main__":
    run_main(main)
