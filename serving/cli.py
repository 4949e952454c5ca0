"""Command-line helpers shared by the serving entry points."""

from __future__ import annotations


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
