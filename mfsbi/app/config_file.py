"""``mfsbi run --config FILE``: RunConfig fields read from a TOML, JSON or YAML file.

Only reading and checking the file's shape lives here (no Prefect, no pydantic model): the values
are validated by :class:`~mfsbi.flows.config.RunConfig` like the command line's.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS", "MAX_CONFIG_BYTES", "ConfigFile", "ConfigFileError", "FieldLabels", "load_config_file",
    "merge_options", "one_line",
]

FORMATS = {".toml": "TOML", ".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}
# A run's settings fit in a few kB; an observation of an image task in a few MB.
MAX_CONFIG_BYTES = 16 * 2**20


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message is one line naming the file (and key)."""


def one_line(text: object) -> str:
    """Joins the lines of a message (as ``str.splitlines`` sees them) with single spaces."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


@dataclass(frozen=True)
class ConfigFile:
    """The fields a config file sets.

    Arguments:
        path: the file, as the user named it.
        values: field name (snake_case) -> value.
        keys: field name -> the key as spelled in the file (``hf-sims`` or ``hf_sims``).
    """

    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str:
        """``FILE: KEY``, how messages name a field set by this file."""
        return f"{self.path}: {self.keys.get(name, name)}"


def _parse(text: str, kind: str) -> Any:
    if kind == "TOML":
        return tomllib.loads(text)
    if kind == "JSON":
        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            # json.loads keeps the last of two equal keys silently; a config must not.
            seen: dict[str, Any] = {}
            for key, value in pairs:
                if key in seen:
                    raise ValueError(f"key {key!r} is given twice")
                seen[key] = value
            return seen

        return json.loads(text, object_pairs_hook=no_duplicates)
    import yaml  # deferred: 15 ms at every CLI start; only a --config FILE.yaml needs it

    value = yaml.safe_load(text)
    # An empty (or comment-only) YAML document is None: the same as an empty table.
    return {} if value is None else value


def _read(path: Path) -> tuple[str, str]:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigFileError(f"--config: {str(path)!r} has an unsupported extension {path.suffix!r}; "
                              "use .toml, .json, .yaml or .yml")
    try:
        exists, is_file = path.exists(), path.is_file()
        size = path.stat().st_size if is_file else 0
    except (OSError, ValueError) as error:  # a name too long, a NUL in it
        raise ConfigFileError(f"--config: cannot read {str(path)!r} ({one_line(error)})") from None
    if not exists:
        raise ConfigFileError(f"--config: file {str(path)!r} does not exist")
    if not is_file:  # a folder, a FIFO, /dev/zero: nothing to read once
        raise ConfigFileError(f"--config: {str(path)!r} is not a regular file")
    if size > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"--config: {str(path)!r} is over {MAX_CONFIG_BYTES // 2**20} MiB; is it the right file?")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigFileError(f"--config: cannot read {str(path)!r} ({one_line(error)})") from None
    try:
        return data.decode("utf-8-sig"), kind
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"--config: {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                              f"expected {kind}") from None


def load_config_file(path: Path, fields: Collection[str]) -> ConfigFile:
    """Reads a config file: a table of field names to values, keys in snake_case or kebab-case.

    Arguments:
        path: a ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file.
        fields: the valid field names (snake_case).

    Returns:
        The values by field name, and each key as the file spells it.

    Raises:
        ConfigFileError: missing, unreadable or corrupt file, a top level that is not a table, a key
            that is not a field (with the closest field name) or a field given twice.
    """
    text, kind = _read(path)
    try:
        document = _parse(text, kind)
    except RecursionError:
        raise ConfigFileError(f"--config: {str(path)!r} is nested too deeply to be a config") from None
    except Exception as error:  # noqa: BLE001 -- each parser has its own error classes; all mean bad syntax
        raise ConfigFileError(f"--config: {str(path)!r} is not valid {kind} ({one_line(error)})") from None
    if not isinstance(document, Mapping):
        raise ConfigFileError(f"--config: {str(path)!r} holds a {type(document).__name__} at the top level; "
                              "expected a table of RunConfig fields (key = value)")
    result = ConfigFile(path)
    for key, value in document.items():
        if not isinstance(key, str):
            raise ConfigFileError(f"{path}: key {key!r} is of type {type(key).__name__}; keys are field names")
        name = key.replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
            hint = "; the keys are RunConfig's fields (mfsbi/flows/config.py)"
            if close:
                suggestion = close[0].replace("_", "-") if "-" in key else close[0]  # the file's own spelling
                hint = f"; did you mean {suggestion!r}?"
            raise ConfigFileError(f"{path}: unknown key {key!r}{hint}")
        if name in result.keys:
            raise ConfigFileError(f"{path}: key {key!r} is given twice (also as {result.keys[name]!r})")
        result.values[name] = value
        result.keys[name] = key
    return result


# Fields whose command-line option is not their name: ``--sims lf=..,mf=..,hf=..`` sets level_sims.
CLI_FLAGS = {"level_sims": "--sims"}


class FieldLabels:
    """Names a field in messages: ``--flag`` for the command line, ``FILE: KEY`` for a config file.

    Arguments:
        file: the config file, if any.
        from_file: the fields whose value came from it.
    """

    def __init__(self, file: ConfigFile | None = None, from_file: Collection[str] = ()):
        self.file = file
        self.from_file = frozenset(from_file)

    def __call__(self, name: str) -> str:
        if self.file is not None and name in self.from_file:
            return self.file.label(name)
        return CLI_FLAGS.get(name, "--" + name.replace("_", "-"))

    def relabel(self, message: str) -> str:
        """Replaces a message's leading ``--flag`` by ``FILE: KEY`` when the file set that field, or by
        the option that sets it on the command line (:data:`CLI_FLAGS`)."""
        match = re.match(r"--([a-z0-9-]+)(?=[:.])", message)
        if match is None:
            return message
        name = match.group(1).replace("-", "_")
        # The file's key where the file set it, else the option's flag (``--level-sims`` is ``--sims``).
        return self(name) + message[match.end():]


def merge_options(options: Mapping[str, Any], file: ConfigFile | None,
                  explicit: Collection[str]) -> tuple[dict[str, Any], FieldLabels]:
    """Merges command-line options with a config file: defaults < the file < explicit options.

    Arguments:
        options: every command-line option with its value (given or default).
        file: the config file, or None.
        explicit: the options the user gave on the command line.

    Returns:
        The merged values, and the labels that name each field as the user gave it.
    """
    from_file = {name for name in (file.values if file else ()) if name not in explicit}
    values = {name: value for name, value in options.items() if name not in from_file}
    values.update({name: file.values[name] for name in from_file})
    return values, FieldLabels(file, from_file)
