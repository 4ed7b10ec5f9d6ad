r"""The simulation store: a zarr 3 hierarchy of simulation tables and artifact files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import zarr
import zarr.errors
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from .errors import StoreError, StoreMismatchError
from .layout import create_arrays, table_attrs, write_parameter_names
from .space import store_space
from .names import ARTIFACTS, check_artifact_name, check_fidelity, check_task, fidelity_order
from .stamps import mfsbi_version, utc_now
from .table import SimulationTable

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SimulationStore",
    "local_path",
]

FORMAT = "mfsbi-store"
FORMAT_VERSION = 1

# The provenance fields that must match when an existing table is opened.
_CHECKED = ("simulator", "simulator_version", "config_hash")


def local_path(url: str | os.PathLike) -> Path | None:
    """Returns the local folder of a path or ``file://`` URL, or None for other URLs."""

    if isinstance(url, os.PathLike):
        return Path(url)
    if not isinstance(url, str) or not url:
        raise StoreError(f"invalid store location {url!r}")
    if url.startswith("file://"):
        parsed = urlparse(url)
        return Path(unquote(parsed.netloc + parsed.path))
    if "://" in url:
        return None

    return Path(url)


class SimulationStore:
    r"""A store of simulations and artifacts, a zarr 3 group hierarchy.

    Opening never writes, except to initialise a new store; so any number of worker processes
    may open the same store.

    Arguments:
        url: a local folder (created if missing), a ``file://`` URL, or any zarr store URL
            (e.g. ``memory://name``).
        mode: ``"a"`` to read and write, ``"r"`` to read only.
    """

    def __init__(self, url: str | os.PathLike, mode: Literal["r", "a"] = "a"):
        if mode not in ("r", "a"):
            raise ValueError(f"mode: expected 'r' or 'a', got {mode!r}")

        self._url = url
        self._mode = mode
        self._path = local_path(url)

        if self._path is not None:
            store: Any = self._open_local(self._path, mode)
        else:
            store = str(url)

        try:
            root = zarr.open_group(store=store, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            root = None
        except (zarr.errors.ContainsArrayError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"{url}: is a zarr array, not an mfsbi store") from None
        except (zarr.errors.BaseZarrError, ValueError) as e:
            raise StoreError(f"{url}: not an mfsbi store ({e})") from None

        if root is None:
            if mode == "r":
                raise StoreError(f"{url}: no mfsbi store there")

            root = zarr.open_group(store=store, mode="a")
            root.attrs.update(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "mfsbi_version": mfsbi_version(),
                    "created_at": utc_now(),
                }
            )
            root.require_group(ARTIFACTS)
        else:
            attrs = root.attrs.asdict()

            if attrs.get("format") != FORMAT:
                raise StoreError(f"{url}: a zarr group but not an mfsbi store (no format attribute)")
            if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise StoreError(
                    f"{url}: store format version {attrs['format_version']} is newer than "
                    f"this mfsbi reads ({FORMAT_VERSION}); upgrade mfsbi"
                )
            if mode == "a":
                root = zarr.open_group(store=store, mode="a")

        self._root = root

    @staticmethod
    def _open_local(path: Path, mode: str) -> LocalStore:
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: is a file, not a store folder")
        if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").exists():
            raise StoreError(f"{path}: a non-empty folder that is not a zarr store")
        if mode == "r":
            if not path.is_dir():
                raise StoreError(f"{path}: no mfsbi store there")
            return LocalStore(path, read_only=True)

        path.mkdir(parents=True, exist_ok=True)

        return LocalStore(path)

    def __repr__(self) -> str:
        return f"SimulationStore({str(self._url)!r}, mode={self._mode!r})"

    @property
    def path(self) -> Path | None:
        """The local folder of the store, or None for a non-local store."""

        return self._path

    @property
    def url(self) -> str:
        """A string that reopens this store from another process: an absolute folder or the URL."""

        return str(self._path.absolute()) if self._path is not None else str(self._url)

    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""

        return self._mode == "r"

    @property
    def root(self) -> zarr.Group:
        """The root zarr group."""

        return self._root

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self._url}: store is open read-only")

    # Tables

    def _group(self, key: str) -> zarr.Group | None:
        try:
            node = self._root[key]
        except KeyError:
            return None

        return node if isinstance(node, zarr.Group) else None

    def table(self, task: str, fidelity: str) -> SimulationTable | None:
        """Opens an existing table.

        Arguments:
            task: the task name.
            fidelity: ``"lf"``, an intermediate level's name, or ``"hf"``.

        Returns:
            The table, or None if there is none.
        """

        key = f"{check_task(task)}/{check_fidelity(fidelity)}"
        group = self._group(key)

        if group is None:
            return None
        if "mfsbi_table" not in group.attrs:
            raise StoreError(f"{key}: a zarr group but not a simulation table")

        missing = set(("theta", "x", "status")) - set(group.array_keys())

        if missing:
            raise StoreError(f"{key}: incomplete table (missing {sorted(missing)})")

        return SimulationTable(group, read_only=self.read_only)

    @staticmethod
    def _requested(task, fidelity, theta_dim, x_dim, chunk_size, provenance) -> tuple[str, dict[str, Any]]:
        key = f"{check_task(task)}/{check_fidelity(fidelity)}"

        for name, value in (("theta_dim", theta_dim), ("x_dim", x_dim), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")

        missing = [k for k in _CHECKED if k not in provenance]

        if missing:
            raise ValueError(f"provenance: missing {missing}")

        return key, {
            "theta_dim": int(theta_dim),
            "x_dim": int(x_dim),
            "chunk_size": int(chunk_size),
            **{k: str(provenance[k]) for k in _CHECKED},
        }

    @staticmethod
    def _check_existing(key: str, group: zarr.Group, requested: dict[str, Any]) -> None:
        if "mfsbi_table" not in group.attrs:
            raise StoreError(f"{key}: a zarr group but not a simulation table")
        stored = group.attrs.asdict()
        for field, value in requested.items():
            if stored.get(field) != value:
                raise StoreMismatchError(key, field, stored.get(field), value)

    def check_table(
        self,
        task: str,
        fidelity: str,
        *,
        theta_dim: int,
        x_dim: int,
        chunk_size: int,
        provenance: dict[str, Any],
    ) -> bool:
        r"""Checks, writing nothing, that :meth:`require_table` with these arguments would succeed.

        Returns:
            ``True`` if the table exists and matches, ``False`` if it does not exist yet.

        Raises:
            StoreMismatchError: the table exists with other settings.
        """

        key, requested = self._requested(task, fidelity, theta_dim, x_dim, chunk_size, provenance)
        group = self._group(key)
        if group is None:
            return False
        self._check_existing(key, group, requested)
        return True

    def require_table(
        self,
        task: str,
        fidelity: str,
        *,
        theta_dim: int,
        x_dim: int,
        chunk_size: int,
        provenance: dict[str, Any],
        parameter_names: Sequence[str] | None = None,
    ) -> SimulationTable:
        r"""Opens a table, checking that it matches the request, or creates it.

        Arguments:
            task: the task name.
            fidelity: ``"lf"``, an intermediate level's name, or ``"hf"``.
            theta_dim: the number of parameters per row.
            x_dim: the number of outputs per row.
            chunk_size: the number of rows per chunk (one simulator batch).
            provenance: ``simulator``, ``simulator_version``, ``config_hash`` (checked on open),
                optionally ``prior`` (a string) and other keys (stored, not checked).
            parameter_names: names of theta's columns, stored as its xarray coordinate.

        Returns:
            The table.
        """

        self._writable()
        key, requested = self._requested(task, fidelity, theta_dim, x_dim, chunk_size, provenance)
        group = self._group(key)

        # Metadata files of about a KiB each: the group and its eight arrays.
        with store_space(self._root.store, f"the new table '{key}'", 9 * 1024):
            if group is None:
                attrs = table_attrs(task, fidelity, int(theta_dim), int(x_dim), int(chunk_size), provenance)
                self._root.require_group(task)
                group = self._root.create_group(key, attributes=attrs)
            else:
                self._check_existing(key, group, requested)

            # Also completes a table whose creation was interrupted.
            create_arrays(group, int(theta_dim), int(x_dim), int(chunk_size))
            if parameter_names is not None and len(parameter_names) == int(theta_dim):
                write_parameter_names(group, parameter_names)

        table = SimulationTable(group)

        # The array shapes are the truth for the dimensions.
        if table.theta_dim != requested["theta_dim"]:
            raise StoreMismatchError(key, "theta_dim", table.theta_dim, requested["theta_dim"])
        if table.x_dim != requested["x_dim"]:
            raise StoreMismatchError(key, "x_dim", table.x_dim, requested["x_dim"])

        return table

    def tables(self) -> list[tuple[str, str]]:
        """Returns the ``(task, fidelity)`` pairs of the tables in the store, sorted."""

        found = []

        with warnings.catch_warnings():
            # The run lock (`.mfsbi.lock`) sits in the root folder; zarr warns it is no component.
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            task_names = sorted(self._root.group_keys())

        for task in task_names:
            if task == ARTIFACTS:
                continue

            task_group = self._group(task)
            if task_group is None:
                continue
            # Every fidelity of the task's chain: lf, intermediate levels, hf.
            for fidelity in sorted(task_group.group_keys(), key=fidelity_order):
                group = self._group(f"{task}/{fidelity}")

                if group is not None and "mfsbi_table" in group.attrs:
                    found.append((task, fidelity))

        return found

    def summary(self) -> dict[str, Any]:
        """Returns the store's state: format, and per table the counts by status and budget."""

        tables = {}

        for task, fidelity in self.tables():
            table = self.table(task, fidelity)
            budget = table.budget()

            tables[f"{task}/{fidelity}"] = {
                **table.counts(),
                "chunk_size": table.chunk_size,
                "budget": None
                if budget is None
                else {"total": budget.total, "reserved": budget.reserved, "remaining": budget.remaining},
            }

        return {
            "location": self.url,
            "format": FORMAT,
            "format_version": int(self._root.attrs.get("format_version", FORMAT_VERSION)),
            "tables": tables,
        }

    # Artifacts

    def _artifact_key(self, name: str) -> str:
        prefix = self._root.store_path.path

        return "/".join(p for p in (prefix, ARTIFACTS, check_artifact_name(name)) if p)

    def write_artifact(self, name: str, data: bytes) -> str:
        """Stores a file under ``artifacts/`` (atomically for a local folder).

        Arguments:
            name: a relative POSIX path, e.g. ``"posteriors/round-1.pt"``.
            data: the file's bytes.

        Returns:
            The store key of the file.
        """

        self._writable()

        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")

        key = self._artifact_key(name)
        buffer = default_buffer_prototype().buffer.from_bytes(bytes(data))

        with store_space(self._root.store, f"artifact {name!r}", len(data)):
            sync(self._root.store.set(key, buffer))

        return key

    def read_artifact(self, name: str) -> bytes:
        """Reads a file stored under ``artifacts/``.

        Raises:
            FileNotFoundError: if there is no such artifact.
        """

        key = self._artifact_key(name)
        buffer = sync(self._root.store.get(key, prototype=default_buffer_prototype()))

        if buffer is None:
            raise FileNotFoundError(f"{self._url}: no artifact {name!r}")

        return buffer.to_bytes()

    def artifacts(self) -> list[str]:
        """Returns the names of the stored artifacts, sorted."""

        prefix = self._artifact_key("_")[:-1]

        async def collect() -> list[str]:
            return [key async for key in self._root.store.list_prefix(prefix)]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keys = sync(collect())

        return sorted(k[len(prefix) :] for k in keys if k[len(prefix) :] != "zarr.json")

    def artifact_path(self, name: str) -> Path | None:
        """Returns the local file of an artifact (existing or not), or None for a non-local store."""

        check_artifact_name(name)

        if self._path is None:
            return None

        return self._path / ARTIFACTS / name
