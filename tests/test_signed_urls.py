"""Signed URLs' domain module: the canonical form, signing, and every way a
URL fails to verify (a 403, never anything else, however malformed)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from export_service.cli import main
from export_service.config import settings_from_mapping
from export_service.errors import ConfigError, InvalidSignature, UrlExpired
from export_service.http.access import runner_options
from export_service.http.app import create_app
from export_service.obs.logs import JsonFormatter
from export_service.signed_urls import (
    MAX_TARGET_CHARS,
    canonical_request,
    is_signed,
    sign_url,
    verify,
)
from tests.helpers import AirTree, error_detail, first_answer, wait_until, write
from tests.live import live_service

SECRET = "s" * 32
OLD_SECRET = "o" * 40
NOW = 1_800_000_000


def _verify(url: str, method: str = "GET", now: float = NOW, **kwargs: object) -> int:
    parts = urllib.parse.urlsplit(url)
    secrets = kwargs.pop("secrets", (SECRET,))
    return verify(method, parts.path, parts.query, secrets, now=now, **kwargs)  # type: ignore[arg-type]


def test_a_signed_url_appends_expires_and_signature_and_verifies() -> None:
    url = sign_url("/api/air/export/zip/r1?param_run_id=p1", 600, SECRET, now=NOW)
    start, _, signature = url.rpartition("&signature=")
    assert start == f"/api/air/export/zip/r1?param_run_id=p1&expires={NOW + 600}"
    assert len(signature) == 43 and "=" not in signature
    assert _verify(url) == NOW + 600
    assert _verify(url, "HEAD") == NOW + 600


def test_an_absolute_url_keeps_its_host_and_signs_only_path_and_query() -> None:
    url = sign_url("https://export.example.com/api/audio/r1/mix.wav", 60, SECRET, now=NOW)
    assert url.startswith("https://export.example.com/api/audio/r1/mix.wav?expires=")
    assert _verify(url.removeprefix("https://export.example.com")) == NOW + 60


def test_reencoding_and_reordering_still_verify() -> None:
    url = sign_url(
        "/api/audio/r%7E1/a%20b.wav?steps=render&prefix=x%2Fy&prefix=", 60, SECRET, now=NOW
    )
    parts = urllib.parse.urlsplit(url)
    pairs = parts.query.split("&")
    assert _verify("/api/audio/r~1/a%20b.wav?" + "&".join(reversed(pairs))) == NOW + 60
    assert _verify(parts.path + "?" + parts.query.replace("x%2Fy", "x/y")) == NOW + 60
    assert _verify(parts.path + "?" + parts.query.replace("prefix=&", "prefix&")) == NOW + 60
    assert canonical_request("GET", "/a%7e", "b=1&a=2") == canonical_request(
        "HEAD", "/a~", "a=2&b=1"
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/zip/r1", "/zip/r2"),  # another run
        ("/zip/", "/list/"),  # another route
        ("param_run_id=p1", "param_run_id=p2"),
        ("steps=render", "steps=midi_generation"),
        ("steps=render", "steps=render&steps=midi_generation"),  # an added pair
        ("&steps=render", ""),  # a removed pair
        ("prefix=stems", "prefix=stems&prefix="),  # an added blank pair
        ("prefix=stems", "prefix=stem"),
        (f"expires={NOW + 60}", f"expires={NOW + 61}"),
    ],
)
def test_any_change_of_path_query_or_expiry_fails(old: str, new: str) -> None:
    url = sign_url(
        "/api/air/export/zip/r1?param_run_id=p1&steps=render&prefix=stems", 60, SECRET, now=NOW
    )
    assert _verify(url) == NOW + 60
    tampered = url.replace(old, new, 1)
    assert tampered != url
    with pytest.raises(InvalidSignature, match="does not match"):
        _verify(tampered)


def test_a_tampered_signature_and_another_secret_fail() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, SECRET, now=NOW)
    last = url[-1]
    with pytest.raises(InvalidSignature, match="does not match"):
        _verify(url[:-1] + ("A" if last != "A" else "B"))
    with pytest.raises(InvalidSignature, match="does not match"):
        _verify(url, secrets=("t" * 32,))


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "OPTIONS"])
def test_only_get_and_head(method: str) -> None:
    url = sign_url("/api/air/export/links/r1", 60, SECRET, now=NOW)
    with pytest.raises(InvalidSignature, match="GET and HEAD only"):
        _verify(url, method)


def test_the_previous_secret_verifies_during_a_rotation_and_not_after() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, OLD_SECRET, now=NOW)
    assert _verify(url, secrets=(SECRET, OLD_SECRET)) == NOW + 60
    with pytest.raises(InvalidSignature):
        _verify(url, secrets=(SECRET, ""))


def test_no_secret_means_signed_urls_are_off() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, SECRET, now=NOW)
    with pytest.raises(InvalidSignature, match="not enabled"):
        _verify(url, secrets=("", ""))


def test_good_until_the_second_it_names_then_expired_signature_checked_first() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, SECRET, now=NOW)
    assert _verify(url, now=NOW + 60) == NOW + 60
    assert _verify(url, now=NOW + 60.999) == NOW + 60  # the whole second it names
    with pytest.raises(UrlExpired):
        _verify(url, now=NOW + 61)
    # An expired URL with a wrong signature is a 403, not a 410.
    with pytest.raises(InvalidSignature):
        _verify(url.replace("/r1", "/r2"), now=NOW + 3600)


def test_a_url_too_long_for_a_request_line_is_not_minted() -> None:
    """aiohttp reads request lines of at most 8,190 bytes: a signed URL longer
    than that could be minted but never fetched."""
    prefixes = "&".join(f"prefix=p{i}" + "y" * 130 for i in range(60))
    with pytest.raises(ValueError, match="more than the 8,000"):
        sign_url(f"/api/air/export/zip/r1?{prefixes}", 60, SECRET, now=NOW)
    longest = sign_url("/a?" + "x" * (MAX_TARGET_CHARS - 80), 60, SECRET, now=NOW)
    assert len(longest) <= MAX_TARGET_CHARS


def test_an_expiry_beyond_the_maximum_is_refused() -> None:
    url = sign_url("/api/air/export/zip/r1", 3601, SECRET, now=NOW)
    with pytest.raises(InvalidSignature, match="more than 3600 seconds"):
        _verify(url, max_seconds=3600)
    assert _verify(url, now=NOW + 1, max_seconds=3600) == NOW + 3601


@pytest.mark.parametrize(
    "query",
    [
        "expires=1900000000",  # no signature
        "signature=" + "A" * 43,  # no expiry
        "expires=1900000000&expires=1900000000&signature=" + "A" * 43,
        "expires=1900000000&signature=" + "A" * 43 + "&signature=" + "A" * 43,
        "expires=&signature=" + "A" * 43,
        "expires=-5&signature=" + "A" * 43,
        "expires=1e9&signature=" + "A" * 43,
        "expires=%EF%BC%91&signature=" + "A" * 43,  # a full-width digit
        "expires=" + "9" * 13 + "&signature=" + "A" * 43,  # too long
        "expires=1900000000&signature=" + "A" * 42,
        "expires=1900000000&signature=" + "A" * 44,
        "expires=1900000000&signature=" + "A" * 42 + "=",
        "expires=1900000000&signature=" + "A" * 42 + "%FF",
        "expires=1900000000&signature=",
    ],
)
def test_malformed_values_are_invalid_signatures(query: str) -> None:
    assert is_signed(query)
    with pytest.raises(InvalidSignature):
        verify("GET", "/api/air/export/zip/r1", query, (SECRET,), now=NOW)


@given(st.text(max_size=60), st.text(max_size=60))
def test_any_query_is_a_403_or_verifies_never_another_error(path: str, query: str) -> None:
    with contextlib.suppress(InvalidSignature):
        verify("GET", "/" + path, query, (SECRET,), now=NOW)


def test_is_signed_sees_either_parameter_decoded() -> None:
    assert not is_signed("")
    assert not is_signed("param_run_id=p&expiresx=1")
    assert is_signed("%65xpires=1")
    assert is_signed("signature")


@pytest.mark.parametrize("expires_in", [0, -1, 1.5, True])
def test_sign_url_refuses_a_bad_lifetime(expires_in: object) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        sign_url("/a", expires_in, SECRET)  # type: ignore[arg-type]


def test_sign_url_refuses_a_short_secret_and_a_url_already_signed() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        sign_url("/a", 60, "s" * 31)
    with pytest.raises(ValueError, match="'expires'"):
        sign_url("/a?expires=5", 60, SECRET)
    with pytest.raises(ValueError, match="'signature'"):
        sign_url("/a?x=1&signature=5", 60, SECRET)


# -- The service: signed-URL requests over HTTP -------------------------------


class Clock:
    """The app's clock, set by the test (``create_app(clock=...)``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def signed_client(
    tree: AirTree, aiohttp_client: Any
) -> Callable[..., Awaitable[tuple[TestClient[Any, Any], Clock]]]:
    async def factory(**auth: Any) -> tuple[TestClient[Any, Any], Clock]:
        write(tree.render / "r1" / "mix.wav", bytes(range(256)) * 40)
        write(tree.render / "r1" / "stems" / "kick.wav", b"kick" * 100)
        write(tree.midi / "20261101_100000_r1" / "track.mid", b"MThd")
        write(tree.render / "r2" / "mix.wav", b"other run")
        clock = Clock(NOW)
        settings = tree.settings(auth={"token": TOKEN, "signing_secret": SECRET, **auth})
        server = TestServer(create_app(settings, clock=clock))
        await server.start_server(**runner_options(server.app))
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client, clock

    return factory


TOKEN = "t0ken"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SignedClient = Callable[..., Awaitable[tuple[TestClient[Any, Any], Clock]]]


@pytest.mark.parametrize(
    "path",
    [
        "/api/air/export/zip/r1",
        "/api/air/export/list/r1?param_run_id=",
        "/api/audio/r1/mix.wav",
        "/api/midi-generation/output/20261101_100000_r1/track.mid",
    ],
)
async def test_a_signed_url_is_let_in_without_the_token_get_and_head(
    signed_client: SignedClient, path: str
) -> None:
    client, _ = await signed_client()
    with_token = await client.get(path, headers=BEARER)
    assert with_token.status == 200
    url = sign_url(path, 300, SECRET, now=NOW)
    signed = await client.get(url)
    assert signed.status == 200
    assert await signed.read() == await with_token.read()
    assert signed.headers.get("ETag") == with_token.headers.get("ETag")
    head = await client.head(url)
    assert head.status == 200
    assert (await client.get(path)).status == 401  # the same URL unsigned still needs it


async def test_a_link_can_be_read_with_a_signed_url_never_written(
    tree: AirTree, signed_client: SignedClient
) -> None:
    client, _ = await signed_client()
    tree.link({"r1": {"param_run_id": "p1", "updated_at": 1.0}})
    url = sign_url("/api/air/export/links/r1", 300, SECRET, now=NOW)
    read = await client.get(url)
    assert read.status == 200
    assert (await read.json())["param_run_id"] == "p1"
    written = await client.put(url, json={"param_run_id": "p2"})
    assert written.status == 403
    assert json.loads(tree.links.read_text())["r1"]["param_run_id"] == "p1"


async def test_an_open_service_with_a_secret_checks_signed_urls_only(
    signed_client: SignedClient,
) -> None:
    client, _ = await signed_client(token="")
    assert (await client.get("/api/audio/r1/mix.wav")).status == 200
    assert (await client.get("/api/audio/r1/mix.wav?expires=1&signature=x")).status == 403
    url = sign_url("/api/audio/r1/mix.wav", 300, SECRET, now=NOW)
    assert (await client.get(url)).status == 200


async def test_the_403_410_401_matrix(signed_client: SignedClient) -> None:
    client, clock = await signed_client()
    path = "/api/air/export/zip/r1"
    url = sign_url(path, 300, SECRET, now=NOW)
    cases = [
        (url.replace("/r1", "/r2"), 403, "invalid_signature"),  # another run
        (url + "&param_run_id=p9", 403, "invalid_signature"),  # another selection
        (url.split("&signature=")[0], 403, "invalid_signature"),  # no signature
        (path + "?signature=" + "A" * 43, 403, "invalid_signature"),  # no expiry
        (path + "?expires=x&signature=%%", 403, "invalid_signature"),
        (path, 401, "unauthorized"),
    ]
    for target, status, code in cases:
        detail = await error_detail(client, "GET", target, status)
        assert detail["error"] == code
    assert (
        await client.put(url.replace("/zip/", "/links/"), json={"param_run_id": "p"})
    ).status == 403
    clock.now = NOW + 301
    detail = await error_detail(client, "GET", url, 410)
    assert detail["error"] == "url_expired"
    head = await client.head(url)
    assert head.status == 410
    # Signature first: a tampered URL past its expiry is still a 403.
    assert (await client.get(url.replace("/r1", "/r2"))).status == 403
    # A bearer token does not rescue a bad signature: the URL is a signed one.
    assert (await client.get(url, headers=BEARER)).status == 410


async def test_without_a_secret_signed_urls_are_refused_and_tokens_still_work(
    signed_client: SignedClient,
) -> None:
    client, _ = await signed_client(signing_secret="")
    url = sign_url("/api/air/export/zip/r1", 300, SECRET, now=NOW)
    detail = await error_detail(client, "GET", url, 403)
    assert "not enabled" in detail["message"]
    assert (await client.get("/api/air/export/zip/r1", headers=BEARER)).status == 200


async def test_the_previous_secret_is_accepted_during_a_rotation(
    signed_client: SignedClient,
) -> None:
    client, _ = await signed_client(signing_secret="n" * 32, previous_signing_secret=SECRET)
    old = sign_url("/api/audio/r1/mix.wav", 300, SECRET, now=NOW)
    new = sign_url("/api/audio/r1/mix.wav", 300, "n" * 32, now=NOW)
    assert (await client.get(old)).status == 200
    assert (await client.get(new)).status == 200
    assert (
        await client.get(sign_url("/api/audio/r1/mix.wav", 300, "x" * 32, now=NOW))
    ).status == 403


async def test_an_expiry_beyond_the_configured_maximum_is_refused(
    signed_client: SignedClient,
) -> None:
    client, _ = await signed_client(max_signed_url_seconds=600)
    detail = await error_detail(
        client, "GET", sign_url("/api/audio/r1/mix.wav", 601, SECRET, now=NOW), 403
    )
    assert "auth.max_signed_url_seconds" in detail["message"]
    assert (await client.get(sign_url("/api/audio/r1/mix.wav", 600, SECRET, now=NOW))).status == 200


@pytest.mark.parametrize("path", ["/api/air/export/zip/r1", "/api/audio/r1/mix.wav"])
async def test_a_range_and_its_resume_work_until_expiry_then_410(
    signed_client: SignedClient, path: str
) -> None:
    client, clock = await signed_client()
    url = sign_url(path, 300, SECRET, now=NOW)
    whole = await client.get(url)
    body, etag = await whole.read(), whole.headers["ETag"]
    clock.now = NOW + 300  # the last second it is good
    part = await client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert part.status == 206
    assert await part.read() == body[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(body) - 1}/{len(body)}"
    clock.now = NOW + 301
    late = await client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert late.status == 410


async def test_a_reencoded_and_reordered_signed_url_is_still_good(
    signed_client: SignedClient,
) -> None:
    client, _ = await signed_client()
    url = sign_url("/api/air/export/list/r1?param_run_id=&x=%7E", 300, SECRET, now=NOW)
    path, _, query = url.partition("?")
    reordered = path.replace("r1", "%72%31") + "?" + "&".join(reversed(query.split("&")))
    answer = await client.get(URL(reordered, encoded=True))
    assert answer.status == 200, await answer.text()


async def test_the_signature_is_never_logged_nor_echoed(
    signed_client: SignedClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client, clock = await signed_client()
    url = sign_url("/api/air/export/zip/r1", 300, SECRET, now=NOW)
    signature = url.rpartition("=")[2]
    answers = [await client.get(url), await client.get(url.replace("/r1", "/r2"))]
    clock.now = NOW + 301
    answers.append(await client.get(url))
    assert [answer.status for answer in answers] == [200, 403, 410]
    for answer in answers[1:]:
        assert signature not in await answer.text()
    for answer in answers:
        assert signature not in str(answer.headers)
    await wait_until(lambda: sum(r.name == "export_service.access" for r in caplog.records) >= 3)
    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert any("/api/air/export/zip/r1" in line for line in lines)
    assert not any(signature in line for line in lines)


async def test_100_continue_for_a_good_signature_not_for_a_bad_one(
    signed_client: SignedClient,
) -> None:
    client, _ = await signed_client()
    url = sign_url("/api/air/export/list/r1", 300, SECRET, now=NOW)

    def head(target: str) -> bytes:
        return (
            f"GET {target} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        ).encode()

    assert await first_answer(client, head(url)) == b"HTTP/1.1 100 Continue\r\n"
    bad = url.replace("/r1", "/r2")
    assert await first_answer(client, head(bad)) == b"HTTP/1.1 403 Forbidden\r\n"
    unsigned = "/api/air/export/list/r1"
    assert await first_answer(client, head(unsigned)) == b"HTTP/1.1 401 Unauthorized\r\n"


# -- Config and the command line ----------------------------------------------


def test_a_short_secret_is_a_config_error_naming_the_key(tree: AirTree) -> None:
    with pytest.raises(ConfigError, match=r"auth\.signing_secret: must be empty or at least 32"):
        tree.settings(auth={"signing_secret": "s" * 31})
    with pytest.raises(ConfigError, match=r"auth\.previous_signing_secret: must be empty or"):
        tree.settings(auth={"signing_secret": SECRET, "previous_signing_secret": "short"})
    env = {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": "x"}
    with pytest.raises(ConfigError, match="EXPORT_SERVICE_AUTH_SIGNING_SECRET: must be empty"):
        settings_from_mapping(tree.settings().model_dump(mode="json"), env)


def test_the_secrets_are_redacted_in_repr_and_check_config(
    tree: AirTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tree.settings(auth={"signing_secret": SECRET, "previous_signing_secret": OLD_SECRET})
    assert SECRET not in repr(settings) and OLD_SECRET not in repr(settings)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[roots]\nrender = "{tree.render}"\nmidi_generation = "{tree.midi}"\n'
        f'param_generation = "{tree.param}"\n[links]\nfile = "{tree.links}"\n'
        f'[auth]\nprevious_signing_secret = "{OLD_SECRET}"\n'
    )
    env = {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET}
    with patch.dict(os.environ, env):
        assert main(["check-config", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert SECRET not in printed and OLD_SECRET not in printed
    auth = json.loads(printed)["auth"]
    assert auth["signing_secret"] == auth["previous_signing_secret"] == "<redacted>"


ENV_SECRET = "EXPORT_SERVICE_AUTH_SIGNING_SECRET"


def _sign(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "export_service", "sign-url", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **env},
    )


@pytest.mark.slow
def test_sign_url_prints_a_url_the_service_takes_without_the_token(tree: AirTree) -> None:
    """The CLI's URL, fetched with curl from a real ``serve``; the secret from
    the environment (no config file for sign-url), the service's from its file."""
    write(tree.render / "r1" / "mix.wav", b"RIFF" * 1000)
    env = {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET}
    signed = _sign("/api/audio/r1/mix.wav", "--expires-in", "60", env=env)
    assert signed.returncode == 0, signed.stderr
    path = signed.stdout.strip()
    assert path.startswith("/api/audio/r1/mix.wav?expires=")
    assert _verify(path, now=time.time()) <= time.time() + 60
    absolute = _sign(
        "/api/audio/r1/mix.wav", "--expires-in", "60", "--base", "https://e.x/", env=env
    )
    assert absolute.stdout.startswith("https://e.x/api/audio/r1/mix.wav?expires=")
    service_env = {
        "EXPORT_SERVICE_ROOTS_RENDER": str(tree.render),
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION": str(tree.midi),
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": str(tree.param),
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
        "EXPORT_SERVICE_AUTH_TOKEN": TOKEN,
        "EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET,
    }
    with live_service(env=service_env) as service:
        curl = ["curl", "-sS", "-o", "-", "-w", "%{http_code}"]
        fetched = subprocess.run([*curl, service.base_url + path], capture_output=True, timeout=30)
        assert fetched.stdout == b"RIFF" * 1000 + b"200"
        unsigned = subprocess.run(
            [*curl, service.base_url + "/api/audio/r1/mix.wav"], capture_output=True, timeout=30
        )
        assert unsigned.stdout.endswith(b"401")


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (["/a", "--expires-in", "60"], {}, "no signing secret"),
        (["/a", "--expires-in", "60"], {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": "x"}, "at least 32"),
        (
            ["/a", "--expires-in", "700"],
            {
                "EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET,
                "EXPORT_SERVICE_AUTH_MAX_SIGNED_URL_SECONDS": "600",
            },
            "over auth.max_signed_url_seconds (600)",
        ),
        (["/a", "--expires-in", "0"], {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET}, ">= 1"),
        (["a", "--expires-in", "5"], {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET}, "with '/'"),
        (
            ["/a?expires=1", "--expires-in", "5"],
            {"EXPORT_SERVICE_AUTH_SIGNING_SECRET": SECRET},
            "already has",
        ),
    ],
)
@pytest.mark.slow
def test_sign_url_fails_on_one_line_with_exit_2(
    arguments: list[str], env: dict[str, str], message: str
) -> None:
    failed = _sign(*arguments, env=env)
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert message in failed.stderr
    assert failed.stderr.count("\n") == 1
