"""`--config FILE` of `graphgpt train` and `graphgpt generate`: a TOML file setting any of the command's options by
its long name with underscores (`seq_len = 128`, `clip_grad_norm = 0.5`, `best = true`), read with tomllib (data
only: nothing in it is executed) and checked in full before anything runs. An unknown key, a value of the wrong
type or out of its option's range is refused in one line naming the key and the file; options given on the
command line override the file's.

    steps = 5000
    lr = 1e-3
    warmup = 200
    prompt = "def "
"""

from __future__ import annotations

import argparse
import sys

from ..ir.untrusted import read_regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the tomli package (a dependency there)
    import tomli as tomllib

MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A config file that cannot be read, is not TOML, or sets a key its command does not take as given."""


def config_key(action: argparse.Action) -> str:
    """The key of an option in a config file: its first long flag with underscores (--clip-grad-norm ->
    clip_grad_norm)."""
    flag = next(flag for flag in action.option_strings if flag.startswith("--"))
    return flag[2:].replace("-", "_")


def _type_name(value) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text", dict: "a table",
            list: "an array"}.get(type(value), type(value).__name__)


def _checked(action: argparse.Action, value, where: str):
    """`value` as the option `action` would hold it from the command line, or ConfigError saying why not."""
    if action.nargs == 0:  # a flag such as --best: true or false
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_type_name(value)} {value!r:.40}")
        return value
    accepted = getattr(action.type, "accepted", None)  # a number option (cli.number_in): its NumberRange
    if accepted is not None:
        kinds = (int, float) if accepted.kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds) or not accepted.accepts(value):
            raise ConfigError(f"{where}: expected {accepted.describe()}, got {_type_name(value)} {value!r:.40}")
        return accepted.kind(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {_type_name(value)} {value!r:.40}")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {value!r:.40}")
    try:
        return action.type(value) if action.type is not None else value
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The option values (by argparse destination) that the TOML file at `path` sets for the command `parser`
    parses, each checked as the command line checks it."""
    raw = read_regular_file(path, MAX_CONFIG_BYTES, lambda reason: ConfigError(f"--config {path}: {reason}"))
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path}: not valid TOML: {error}") from None
    options = {config_key(action): action for action in parser._actions
               if any(flag.startswith("--") for flag in action.option_strings)
               and action.dest not in ("help", "config")}
    values = {}
    for key, value in document.items():
        if key not in options:
            known = ", ".join(sorted(options))
            raise ConfigError(f"--config {path}: unknown key {key!r:.40}; {parser.prog} takes {known}")
        values[options[key].dest] = _checked(options[key], value, f"--config {path}: key {key}")
    return values
