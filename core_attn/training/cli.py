"""Entry-point glue: a "did you mean" line after Hydra rejects a command-line override.

Hydra names an unknown key (``Key 'atention' is not in struct``) or lists a group's options, but does
not say which valid name was probably meant. :func:`run` runs an app's ``@hydra.main`` function and,
when it exits with an error, checks each override against the app's config tree (group options from
``conf/``, keys of the config composed with the command line's group choices) and prints the closest
valid names.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def run(main: Callable[[], object], config_name: str, conf_dir: Path | str = CONF_DIR) -> None:
    """``main()`` (a ``@hydra.main`` function); on a failing exit, hints for mistyped overrides go to stderr."""
    try:
        main()
    except SystemExit as e:
        if e.code not in (0, None):
            try:
                hints = override_hints(config_name, sys.argv[1:], Path(conf_dir))
            except Exception:  # a hint must never hide the original error
                hints = []
            for line in hints:
                print(line, file=sys.stderr)
        raise


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
