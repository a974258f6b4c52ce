"""The destination registry: what each destination declares about itself, and how they are found.

A destination is a module that declares one ``DESTINATION = Destination(...)`` at its top level
(``tasks/noojee.py`` and the others). Its queue, its settings (``CONTACTSYNC_<NAME>__*``), its
share of the visibility-timeout check, its simulator under `contactsync up` and its
`contactsync submit` commands all come from that declaration: nothing else lists destinations.

Where they are found: every module of the ``tasks`` package, and every module named in
``CONTACTSYNC_DESTINATION_MODULES`` (comma-separated; a package there stands for each of its
modules). A module found there that declares no ``Destination`` (a shared helper) is none.

This module is the bottom layer (``worker/``): it imports the destination modules only when
asked, by name, so the settings and the Celery app can iterate the registry. A destination
module must therefore not read the settings at import time.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

#: Extra destination modules (or packages), comma-separated: ``pkg.mod,otherpkg``.
MODULES_VARIABLE = "CONTACTSYNC_DESTINATION_MODULES"
#: The package whose every module is examined.
BUILT_IN_PACKAGE = "tasks"


@dataclass(frozen=True)
class Destination:
    """One destination, as its module declares it.

    name: its queue, its settings' field (``CONTACTSYNC_<NAME>__*``) and the first part of its
    task's name (``<name>.deliver``) and of its job kinds. settings: the pydantic model of its
    ``CONTACTSYNC_<NAME>__*`` settings; it needs ``connect_timeout_s`` and ``read_timeout_s``.
    job_kinds: the kinds its module registers (``noojee.update``). calls_per_job: the most
    calls one job makes (a login, a read, the write), each of which may wait its full timeouts:
    the visibility-timeout check counts them. simulator: the module of its simulator
    (``python -m MODULE --port 0 --port-file F``), or None. simulator_summary: its line in
    `contactsync sandbox --help`. url_setting: the settings field that holds its address (unset:
    `up` starts the simulator and points it there); sandbox_env: the simulator's own
    credentials, set with it (settings suffixes, not secrets); sandbox_args: the simulator's
    options under `up`. token_login: it logs in for a token the fleet shares (its simulator
    counts logins at ``/_stats`` and expires tokens on ``POST /_expire_tokens``).
    """

    name: str
    settings: type[BaseModel]
    job_kinds: tuple[str, ...]
    calls_per_job: int = 1
    simulator: str | None = None
    simulator_summary: str = ""
    url_setting: str = "base_url"
    sandbox_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    sandbox_args: tuple[str, ...] = ()
    token_login: bool = False
    #: The module that declared it (set when it is found).
    module: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"a destination's name is a lower-case identifier, not {self.name!r}")
        for kind in self.job_kinds:
            if not kind.startswith(f"{self.name}."):
                raise ValueError(f"job kind {kind!r} of {self.name} must start with '{self.name}.'")
        if self.calls_per_job < 1:
            raise ValueError(f"{self.name}: calls_per_job must be at least 1")

    @property
    def task_name(self) -> str:
        return f"{self.name}.deliver"

    def longest_calls_s(self, config: Any) -> float:
        """The longest one job's calls may take, each waiting its full timeouts."""
        return float(self.calls_per_job * (config.connect_timeout_s + config.read_timeout_s))

    def configured(self, config: Any) -> bool:
        """Whether a real endpoint is set (otherwise `up` runs the simulator)."""
        return getattr(config, self.url_setting, None) is not None


def destination_of(module: ModuleType) -> Destination | None:
    """The ``Destination`` a module declares, or None: a module without one is not a destination
    whatever its name."""
    declared = getattr(module, "DESTINATION", None)
    return declared if isinstance(declared, Destination) else None


def _module_names() -> list[str]:
    """Every module examined, built-in first, each once, in a stable order."""
    names: list[str] = []
    wanted = [BUILT_IN_PACKAGE] + [
        part.strip() for part in os.environ.get(MODULES_VARIABLE, "").split(",") if part.strip()
    ]
    for name in wanted:
        module = importlib.import_module(name)
        names.append(name)
        if hasattr(module, "__path__"):  # a package: each of its modules
            names.extend(
                f"{name}.{m.name}"
                for m in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name)
                if not m.name.startswith("_")
            )
    return list(dict.fromkeys(names))


@lru_cache(maxsize=1)
def _registry() -> tuple[Destination, ...]:
    found: dict[str, Destination] = {}
    for name in _module_names():
        declared = destination_of(importlib.import_module(name))
        if declared is None:
            continue
        if declared.name in found and found[declared.name].module != name:
            raise ValueError(
                f"two modules declare the destination {declared.name!r}: "
                f"{found[declared.name].module} and {name}"
            )
        object.__setattr__(declared, "module", name)
        found[declared.name] = declared
    return tuple(found.values())


def registry() -> tuple[Destination, ...]:
    """Every destination, built-in first (imports their modules once per process)."""
    return _registry()


def destination(name: str) -> Destination:
    for declared in registry():
        if declared.name == name:
            return declared
    known = ", ".join(d.name for d in registry())
    raise KeyError(f"no destination {name!r} (known: {known})")


def names() -> list[str]:
    """The destinations' names, sorted: one queue each."""
    return sorted(d.name for d in registry())


def reload() -> None:
    """Find the destinations again (after ``CONTACTSYNC_DESTINATION_MODULES`` changed)."""
    _registry.cache_clear()
