"""The public API: `bulkmail.__all__` is sorted, importable and complete (as httpx checks)."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Iterator
from types import ModuleType

import pytest

import bulkmail
import bulkmail.errors
import bulkmail.pipeline


def test_all_is_sorted() -> None:
    assert bulkmail.__all__ == sorted(bulkmail.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(bulkmail.__all__)) == len(bulkmail.__all__)


@pytest.mark.parametrize("name", bulkmail.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from bulkmail import {name}", namespace)  # the way a user imports it

    assert namespace[name] is getattr(bulkmail, name)
    assert not isinstance(namespace[name], ModuleType)


def test_every_public_name_of_the_package_is_in_all() -> None:
    public = {
        name
        for name in dir(bulkmail)
        if not name.startswith("_") and not isinstance(getattr(bulkmail, name), ModuleType)
    }

    assert public == set(bulkmail.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from bulkmail import *", namespace)

    assert set(namespace) - {"__builtins__"} == set(bulkmail.__all__)


def test_every_error_is_exported() -> None:
    errors = {
        name
        for name, value in inspect.getmembers(bulkmail.errors, inspect.isclass)
        if value.__module__ == "bulkmail.errors"
    }

    assert errors <= set(bulkmail.__all__)
    for name in errors - {"Location"}:
        assert issubclass(getattr(bulkmail, name), bulkmail.BulkmailError)


def test_every_library_entry_point_is_exported() -> None:
    """The functions the CLI calls, and what they return, are part of the API."""
    entry_points = {
        name
        for name, value in inspect.getmembers(bulkmail.pipeline, inspect.isfunction)
        if value.__module__ == "bulkmail.pipeline" and "Example::" in (value.__doc__ or "")
    }

    assert {"check_campaign", "preview_campaign"} <= entry_points
    assert entry_points | {"load_campaign"} <= set(bulkmail.__all__)
    for name in entry_points:
        returned = inspect.signature(getattr(bulkmail, name)).return_annotation
        assert getattr(returned, "__name__", returned) in bulkmail.__all__


def test_exported_objects_come_from_the_package() -> None:
    for name in bulkmail.__all__:
        module = getattr(getattr(bulkmail, name), "__module__", "")
        assert module.startswith("bulkmail."), name
        assert importlib.import_module(module) is not None


def _types_in(hint: object) -> Iterator[type]:
    """Every class named by a type hint, through containers, unions and callables."""
    if isinstance(hint, list):  # the parameters of a Callable
        for item in hint:
            yield from _types_in(item)
        return
    if typing.get_origin(hint) is typing.Literal:
        return
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        yield hint
    for arg in typing.get_args(hint):
        yield from _types_in(arg)


def _hints_of(value: object) -> dict[str, object]:
    """The type hints of a function, or of a class: its fields and annotated attributes,
    its constructor, and its public methods and properties."""
    if not isinstance(value, type):
        return typing.get_type_hints(value)
    hints: dict[str, object] = dict(typing.get_type_hints(value))
    members = [("__init__", value.__dict__.get("__init__"))]
    members += [(name, member) for name, member in vars(value).items() if name[0] != "_"]
    for name, member in members:
        if isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member):
            hints.update({f"{name}.{k}": v for k, v in typing.get_type_hints(member).items()})
    return hints


def test_every_type_in_a_public_signature_is_exported() -> None:
    """A user who can get a value from the API can name its type: every bulkmail class in
    the signature of an export (parameters, returns, fields), recursively, is exported."""
    missing: dict[str, str] = {}
    seen: set[object] = set()
    todo = [(name, getattr(bulkmail, name)) for name in bulkmail.__all__]
    while todo:
        where, value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        for part, hint in _hints_of(value).items():
            for found in _types_in(hint):
                if not found.__module__.startswith("bulkmail."):
                    continue
                if found.__name__ not in bulkmail.__all__:
                    missing.setdefault(found.__name__, f"{where}: {part}")
                todo.append((found.__name__, found))

    assert not missing, "\n".join(f"{name} ({where})" for name, where in sorted(missing.items()))
