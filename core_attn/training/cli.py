"""Entry-point glue: every app command (``python -m <app>.train``, ``.evaluate``, ...) runs through :func:`run`.

A user mistake (a mistyped override, a missing file, a bad value; :mod:`core_attn.errors`) is answered in
one line, ``<app>.<command>: error: <message>``, on stderr with exit code 2 (:data:`EXIT_USER_ERROR`) and no
traceback; ``HYDRA_FULL_ERROR=1`` (Hydra's convention) or ``--debug`` shows the traceback. Other exceptions
are bugs and keep their traceback (exit code 1).

Hydra names an unknown key (``Key 'atention' is not in struct``) or lists a group's options, but does
not say which valid name was probably meant: after such an error, each override is checked against the
app's config tree (group options from ``conf/``, keys of the config composed with the command line's
group choices) and the closest valid names are printed.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from core_attn.errors import EXIT_USER_ERROR, FULL_ERROR_ENV, entry_package, origin, print_error, take_debug_flag
from core_attn.errors import user_error_message as _own_message


def _conf_dir() -> Path:
    """The Hydra configs beside the packages: ``longattn_conf/`` in an installed wheel (pyproject.toml ships
    the top-level ``conf/`` under that name), ``conf/`` in a checkout (editable install)."""
    root = Path(__file__).resolve().parents[2]
    return root / "longattn_conf" if (root / "longattn_conf").is_dir() else root / "conf"


CONF_DIR = _conf_dir()  # every entry point's ``@hydra.main(config_path=str(CONF_DIR))``
_WE_SET = "CORE_ATTN_CLI_SET_FULL_ERROR"  # HYDRA_FULL_ERROR=1 came from run(), not from the user (inherited
                                          # by the processes a run starts, e.g. DDP ranks)

__all__ = ["CONF_DIR", "EXIT_USER_ERROR", "override_hints", "run", "user_error_message"]


def run(main: Callable[[], object], config_name: str, conf_dir: Path | str = CONF_DIR) -> None:
    """``main()`` (a ``@hydra.main`` function): a user error prints one line and exits
    :data:`EXIT_USER_ERROR`; after a config error, hints for mistyped overrides follow on stderr."""
    debug = take_debug_flag() or (os.environ.get(FULL_ERROR_ENV) == "1" and _WE_SET not in os.environ)
    saved = {k: os.environ.get(k) for k in (FULL_ERROR_ENV, _WE_SET)}
    os.environ[FULL_ERROR_ENV] = "1"  # Hydra re-raises the exception instead of printing a trimmed traceback
    if debug:
        os.environ.pop(_WE_SET, None)
    else:
        os.environ[_WE_SET] = "1"
    try:
        main()
    except SystemExit as e:  # Hydra's argument parser, --help
        if e.code not in (0, None):
            _print_hints(config_name, conf_dir)
        raise
    except Exception as e:
        message = None if debug else user_error_message(e, ("core_attn", entry_package(main)))
        if message is None:
            if not _is_config_error(e):
                raise
            traceback.print_exc()
            _print_hints(config_name, conf_dir)
            sys.exit(1)
        print_error(message)
        if _is_config_error(e):
            _print_hints(config_name, conf_dir)
        sys.exit(EXIT_USER_ERROR)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _print_hints(config_name: str, conf_dir: Path | str) -> None:
    try:
        hints = override_hints(config_name, sys.argv[1:], Path(conf_dir))
    except Exception:  # a hint must never hide the original error
        hints = []
    for line in hints:
        print(line, file=sys.stderr)


def _is_config_error(e: BaseException) -> bool:
    """Hydra could not compose the config from the command line (unknown key or option, bad syntax)."""
    from hydra.errors import CompactHydraException, InstantiationException

    return isinstance(e, CompactHydraException) and not isinstance(e, InstantiationException)


def user_error_message(e: BaseException, packages: tuple[str, ...] = ("core_attn",)) -> str | None:
    """The answer to a user error of an app command, ``None`` for a bug: the errors of
    :func:`core_attn.errors.user_error_message`, Hydra's config errors (its message, without the search
    path), a config value left for the user (``???``), and a config whose ``_target_`` does not take one of
    its keys or raised one of these errors while being built."""
    from hydra.errors import CompactHydraException, InstantiationException, OverrideParseException
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

    own = _own_message(e, packages)
    if own is not None:
        return own
    if isinstance(e, InstantiationException):
        cause = e.__cause__
        if cause is not None:
            inner = user_error_message(cause, packages)
            if inner is not None or not origin(cause).startswith("hydra."):
                return inner  # the cause's own message (it names the key), or None: a bug inside the target
        key = next((line.split(":", 1)[1].strip() for line in str(e).splitlines() if line.startswith("full_key:")),
                   None)
        if isinstance(cause, TypeError) and key:  # a key the target's signature does not take
            return f"config {key}: {cause}"
        if isinstance(cause, ImportError):  # no such _target_
            reason = " ".join(_compact(str(cause)).splitlines())
            return f"config {key or '(root)'}: _target_ cannot be imported: {reason}"
        return _compact(str(e))
    if isinstance(e, OverrideParseException):
        return f"override {e.override!r}: {_compact(e.message)}"
    if isinstance(e, CompactHydraException):
        cause = e.__cause__
        return _compact(str(e) + (f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""))
    missing = re.search(r"Missing mandatory value: (\S+)", str(e))
    if isinstance(e, (MissingMandatoryValue, InterpolationResolutionError)) and missing:
        key = missing.group(1)
        used = f"; {e.full_key} refers to it" if e.full_key and e.full_key != key else ""
        return f"{key} has no value (it is ??? in the config{used}): give it on the command line, {key}=<value>"
    if isinstance(e, InterpolationResolutionError):
        return _compact(str(e))
    return None


def _compact(text: str) -> str:
    """Hydra's and OmegaConf's messages without the config search path and the ``full_key:`` /
    ``object_type=`` detail lines, each list of options on one line."""
    lines: list[str] = []
    for line in text.split("\nConfig search path:")[0].splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        if line.startswith("\t") and lines:  # Hydra lists a group's options one per line, tab-indented
            lines[-1] += (" " if lines[-1].endswith(":") else ", ") + stripped
        else:
            lines.append(stripped)
    return "\n".join(lines)


def _groups(conf_dir: Path) -> dict[str, list[str]]:
    """Config groups (folders under conf/, nested as ``a/b``) -> their option names."""
    groups = {}
    for d in conf_dir.rglob("*"):
        if d.is_dir():
            options = sorted(p.stem for p in d.glob("*.yaml"))
            if options:
                groups[d.relative_to(conf_dir).as_posix()] = options
    return groups


def _keys(cfg, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k in cfg.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        try:
            value = cfg._get_node(k)
        except Exception:
            continue
        if isinstance(value, DictConfig):
            keys += _keys(value, full + ".")
    return keys


def override_hints(config_name: str, args: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """One line per override whose key or option is not in the config tree, with the closest valid names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return []
    groups = _groups(conf_dir)
    valid_choices, checks, hints = [], [], []
    for ov, text in zip(parsed, overrides):
        key = ov.key_or_group
        if key.startswith("hydra") or ov.type == OverrideType.DEL:
            continue
        if key in groups:
            value = ov.value()
            names = value if isinstance(value, list) else [value]
            bad = [str(n) for n in names if str(n) not in groups[key] and str(n) != "null"]
            for name in bad:
                close = difflib.get_close_matches(name, groups[key], n=3, cutoff=0.5)
                hints.append(f"'{name}' is not an option of config group '{key}' (override '{text}'); "
                             + (f"did you mean {', '.join(close)}? " if close else "")
                             + f"options: {', '.join(groups[key])}")
            if not bad and ov.type == OverrideType.CHANGE and not isinstance(value, list):
                valid_choices.append(text)
        elif ov.type == OverrideType.CHANGE:
            checks.append((key, text))
    if not checks:
        return hints
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=valid_choices)
    GlobalHydra.instance().clear()
    keys = _keys(cfg)
    known = set(keys)
    for key, text in checks:
        if key in known:
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in keys if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
        close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.5) or difflib.get_close_matches(
            key, keys + list(groups), n=3, cutoff=0.6)
        hints.append(f"unknown config key '{key}' (override '{text}')"
                     + (f"; did you mean {', '.join(close)}?" if close else "")
                     + f" To add a new key use '+{text}'.")
    return hints


_PLAIN = re.compile(r"[\w./\-+~@%:]+")  # a value Hydra's override grammar takes without quotes


def positional_overrides(argv: list[str], key: str, accepts: Callable[[str], bool]) -> list[str]:
    """Rewrite each positional argument that ``accepts`` (e.g. an existing file) as ``key=<path>``, quoted for
    Hydra when needed, so ``python -m vision.predict cat.png ckpt_path=...`` means ``image=cat.png``;
    options (``-x``) and overrides (``a=b``) are kept as they are."""
    out = []
    for arg in argv:
        if not (arg.startswith("-") or "=" in arg) and accepts(arg):
            quoted = arg if _PLAIN.fullmatch(arg) else "'" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'"
            arg = f"{key}={quoted}"
        out.append(arg)
    return out
