"""User mistakes answered in one line: which exceptions a user fixes, and a ``main`` runner that prints
their message instead of a traceback.

A *user error* is one the user fixes by changing the command, the config, a file or the machine, not the
code: a :class:`UserError` (such as :class:`ToolError`), or a ``ValueError``, ``FileNotFoundError`` (and
the other ``OSError`` subclasses about one path), ``FloatingPointError`` or ``ImportError`` raised by a
``raise`` statement of the command's own code (``core_attn`` and the entry point's package), whose
message names the key or file, the value and what to do (docs/operations.md, "Error catalogue"). Any
other exception is a bug and keeps its traceback.

    python -m core_attn.bench --variants lokal          # core_attn.bench: error: ... Did you mean 'local'?
    python -m core_attn.bench --variants lokal --debug  # the same, with the traceback
"""

from __future__ import annotations

import linecache
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import NoReturn

EXIT_USER_ERROR = 2  # like grep, ls and argparse: the command, its config or its input is wrong
DEBUG_FLAG = "--debug"  # on any command line: tracebacks for user errors too
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"  # Hydra's switch for full tracebacks, honoured by every entry point

_RAISED_TYPES = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                 FloatingPointError, ImportError)


class UserError(Exception):
    """A mistake the user fixes (command line, config, data, checkpoint, environment): the message names
    what is wrong, where, and what to do. Entry points print it as one line, without a traceback."""


class ToolError(UserError, RuntimeError):
    """A program the command needs (``espeak-ng``, ``apt-get``) is missing, too old, or failed."""


def _innermost(tb: TracebackType | None) -> TracebackType | None:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def module_name(frame: FrameType) -> str:
    """The dotted module name of ``frame`` (a ``python -m`` module's real name rather than ``__main__``)."""
    name = frame.f_globals.get("__name__", "")
    if name == "__main__":
        spec = frame.f_globals.get("__spec__")
        name = spec.name if spec is not None else name
    return name


def origin(exc: BaseException) -> str:
    """The module the exception was raised in (its innermost traceback frame); ``""`` when unknown."""
    tb = _innermost(exc.__traceback__)
    return module_name(tb.tb_frame) if tb is not None else ""


def raised_in(exc: BaseException, packages: Iterable[str]) -> bool:
    """Whether ``exc`` was raised by a ``raise`` statement of a module in one of ``packages`` (top-level
    names): the project's own message, not an error of a library or of Python itself."""
    tb = _innermost(exc.__traceback__)
    if tb is None or origin(exc).split(".")[0] not in set(packages):
        return False
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def user_error_message(exc: BaseException, packages: Iterable[str] = ("core_attn",)) -> str | None:
    """The message to show for a user error raised by code in ``packages``; ``None`` for anything else."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, _RAISED_TYPES) and not isinstance(exc, ModuleNotFoundError) and raised_in(exc, packages):
        return str(exc)
    return None


def entry_package(main: Callable) -> str:
    """The top-level package of the module defining ``main`` (``vision`` for ``python -m vision.train``, and
    for ``python vision/train.py``: the folder of the script)."""
    name = getattr(main, "__module__", "") or ""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if spec is not None:
        return spec.name.split(".")[0]
    file = getattr(module, "__file__", None)
    return Path(file).resolve().parent.name if name == "__main__" and file else name.split(".")[0]


def take_debug_flag(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is on the command line; it is removed from ``argv`` (default ``sys.argv``), so the
    command's own parser never sees it."""
    argv = sys.argv if argv is None else argv
    found = DEBUG_FLAG in argv[1:]
    argv[1:] = [a for a in argv[1:] if a != DEBUG_FLAG]
    return found


def print_error(message: str) -> None:
    """``<command>: error: <message>`` on stderr (``<command>``: the ``python -m`` module, e.g. ``vision.train``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = spec.name if spec is not None else os.path.basename(sys.argv[0])
    prog = prog.removesuffix(".__main__")  # python -m <package> runs <package>.__main__
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """``sys.exit(main())`` for a plain (non-Hydra) command: a user error raised by ``core_attn`` or by
    ``main``'s package prints one line and exits :data:`EXIT_USER_ERROR`; ``--debug`` or ``HYDRA_FULL_ERROR=1``
    shows its traceback instead. Other exceptions propagate (traceback, exit code 1)."""
    debug = take_debug_flag() or os.environ.get(FULL_ERROR_ENV) == "1"
    try:
        code = main()
    except Exception as e:
        message = None if debug else user_error_message(e, ("core_attn", entry_package(main)))
        if message is None:
            raise
        print_error(message)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code)
