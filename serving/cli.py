"""Command-line and config-file helpers shared by the serving entry points."""

from __future__ import annotations

import json
from pathlib import Path

from intentrec.errors import ConfigError


def key_value_flags(argv: list[str], key_flags: dict[str, str]) -> list[str]:
    """Accept Hydra-style `key=value` arguments beside `--flags`: each known key becomes its flag.

    An unknown key is an error that names it and lists the known ones.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-"):
            if key not in key_flags:
                raise SystemExit(f"error: unknown argument {arg!r}; expected one of {sorted(key_flags)} as key=value.")
            out += [key_flags[key], value]
        else:
            out.append(arg)
    return out


def config_entries(source, key: str, noun: str, keys: tuple[str, ...]) -> list[tuple[str, dict]]:
    """The entries of a YAML or JSON file's `key:` list (or of a list itself), each a mapping whose keys are among
    `keys`, as (a name for messages, "<file>: <noun> <n>", the entry); a ConfigError saying where it breaks
    otherwise (a missing file, a file that does not parse, an empty list, an unknown key). Banner catalogues and
    trigger rules are read with it."""
    if isinstance(source, list | tuple):
        entries, where = list(source), key
    else:
        path, where = Path(source), str(source)
        if not path.is_file():
            raise ConfigError(f"{noun}s file {path} not found; give a YAML or JSON file with a `{key}:` list")
        kind = "JSON" if path.suffix == ".json" else "YAML"
        try:
            import yaml

            loaded = json.loads(path.read_text()) if kind == "JSON" else yaml.safe_load(path.read_text())
        except Exception as error:  # the user's file: say where it breaks
            raise ConfigError(f"{path}: not valid {kind}: {error}") from None
        entries = loaded.get(key) if isinstance(loaded, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{path}: expected a non-empty `{key}:` list of {noun}s")
    out = []
    for n, entry in enumerate(entries):
        name = f"{where}: {noun} {n}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{name}: expected a mapping with keys among {list(keys)}, got {entry!r}")
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            raise ConfigError(f"{name}: unknown key(s) {unknown}; expected keys among {list(keys)}")
        out.append((name, entry))
    return out
