"""Every key of the application's typed state has a value of its type once the
app has started (a key added without a value fails here, not in a handler)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from export_service.http import keys


def _app_keys() -> list[web.AppKey[Any]]:
    return [value for value in vars(keys).values() if isinstance(value, web.AppKey)]


def test_the_keys_are_found() -> None:
    assert keys.SETTINGS in _app_keys() and keys.IO_EXECUTOR in _app_keys()


async def test_a_started_app_holds_a_value_of_each_keys_type(
    client: TestClient[Any, Any],
) -> None:
    app = client.app
    assert app is not None
    for key in _app_keys():
        kind = key._t  # the type the key was made with
        assert kind is not None and key in app, key
        assert isinstance(app[key], kind), key
