"""The public API: `bulkmail.__all__` is sorted, importable and complete (as httpx checks)."""

from __future__ import annotations

import importlib
import inspect
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
