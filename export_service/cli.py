"""Command line: serve, and the same exports offline (manifest, zip, link),
check-config and check-links."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from aiohttp import web
from pydantic import ValidationError

from .config import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    AuthSettings,
    Settings,
    env_overrides,
    env_var,
    environment_server_settings,
    resolve_settings,
    settings_from_mapping,
    unknown_env_vars,
)
from .core.run_ids import run_id_problem
from .core.selection import STEPS, Selection, parse_prefix, parse_steps
from .errors import ConfigError, ExportServiceError
from .exports import Services, build_export, plan_export_archive
from .http.access import runner_options
from .http.app import create_app
from .http.shutdown import CANCEL_WAIT_SECONDS, stop_on_hangup
from .links.store import LinkStore
from .obs.logs import setup_logging
from .sample import SAMPLE_RENDER_RUN_ID, create_sample_tree
from .signed_urls import sign_url

log = logging.getLogger("export_service")  # obs/logs.py: LOGGER_NAMES

EXIT_FAILED = 1
EXIT_CONFIG_ERROR = 2
HEALTHCHECK_TIMEOUT_SECONDS = 2.0


class StartupError(Exception):
    """The service cannot start (its port is taken), or a command's input
    cannot be used (its output is a folder): one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with each error on one line (argparse prints the usage
    first): what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0 to 65535)")
    return port


def _config(value: str) -> Path:
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty (the TOML config file; leave --config out to use "
            f"${CONFIG_ENV_VAR} or, for serve, the sample tree)"
        )
    return Path(value)


def _host(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty (an address or host name)")
    return value


def _run_id(value: str) -> str:
    """A run id argument, taken as the HTTP API takes one: surrounding
    whitespace stripped (``' r1'`` is ``r1``), then checked."""
    stripped = value.strip()
    problem = run_id_problem(stripped)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value!r}: a run id {problem}")
    return stripped


def _optional_run_id(value: str) -> str | None:
    """``--param-run-id``, as the API's ``?param_run_id=``: stripped, and
    absent (the link is used) when empty or blank."""
    return _run_id(value) if value.strip() else None


def _signable_path(value: str) -> str:
    if not value.startswith("/"):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a path of the service starting with '/' (use --base for the host)"
        )
    return value


def _seconds(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds >= 1")
    return int(value)


def _url_base(value: str) -> str:
    if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
        raise argparse.ArgumentTypeError(f"{value!r}: an http(s) URL such as https://host:port")
    return value.rstrip("/")


def _steps(value: str) -> str:
    """A ``--steps`` value, checked as the API checks ``?steps=``."""
    try:
        parse_steps([value])
    except ExportServiceError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    return value


def _prefix(value: str) -> str:
    """A ``--prefix`` value, checked as the API checks ``?prefix=``."""
    try:
        parse_prefix(value)
    except ExportServiceError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    return value


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps`` and ``--prefix``: the API's ``?steps=`` and ``?prefix=``."""
    parser.add_argument(
        "--steps",
        type=_steps,
        action="append",
        default=[],
        help=f"only these steps, comma-separated or repeated ({', '.join(STEPS)})",
    )
    parser.add_argument(
        "--prefix",
        type=_prefix,
        action="append",
        default=[],
        help="only files under this path inside the run folder, matched on whole "
        "segments (repeatable: any of them)",
    )


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser, and each command's parser by name (kept
    here as they are made: argparse offers no public walk of a parser's
    commands, and docs/hooks.py prints each one's help)."""
    parser = _Parser(
        prog="export-service",
        description="An AIR project's artifacts as a JSON manifest or one streamed ZIP.",
        epilog=f"The config file comes from --config or ${CONFIG_ENV_VAR}; any key can be "
        f"overridden as {ENV_PREFIX}<SECTION>_<KEY> (e.g. {ENV_PREFIX}ROOTS_RENDER).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    by_name: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = by_name[name] = commands.add_parser(name, help=help, description=description)
        sub.add_argument(
            "--config", type=_config, help=f"TOML config file (default: ${CONFIG_ENV_VAR})"
        )
        return sub

    serve = command(
        "serve",
        "start the HTTP service",
        "Start the HTTP service. Without a config file (and without "
        f"{ENV_PREFIX}* settings) it serves a built-in sample tree on 127.0.0.1:8080.",
    )
    serve.add_argument("--host", type=_host, help="override server.host")
    serve.add_argument("--port", type=_port, help="override server.port (0 to 65535)")

    manifest = command(
        "manifest",
        "print a project's manifest JSON",
        "Print the manifest of RENDER_RUN_ID, the same JSON the list endpoint returns.",
    )
    manifest.add_argument("render_run_id", type=_run_id)
    manifest.add_argument(
        "--param-run-id",
        type=_optional_run_id,
        help="param run to include (default, or when blank: the link)",
    )
    _selection_arguments(manifest)

    archive = command(
        "zip",
        "write a project's ZIP",
        "Write the ZIP of RENDER_RUN_ID, the same bytes the zip endpoint streams.",
    )
    archive.add_argument("render_run_id", type=_run_id)
    archive.add_argument(
        "--param-run-id",
        type=_optional_run_id,
        help="param run to include (default, or when blank: the link)",
    )
    archive.add_argument(
        "-o", "--output", type=Path, required=True, help="file to write ('-' for standard output)"
    )
    _selection_arguments(archive)

    link = command(
        "link",
        "link a render run to its param run",
        "Set RENDER_RUN_ID -> PARAM_RUN_ID in the configured step_links.json, "
        "with the same locking as the service (safe while it runs).",
    )
    link.add_argument("render_run_id", type=_run_id)
    link.add_argument("param_run_id", type=_run_id)

    health = command(
        "healthcheck",
        "ask the running service whether it is ready (for HEALTHCHECK)",
        "GET /readyz (or /healthz with --live) of the service on this host, at the "
        "port its config resolves to (file plus environment). Exit 0 when it answers "
        "200, 1 otherwise.",
    )
    health.add_argument("--live", action="store_true", help="check /healthz, not /readyz")

    check_links = command(
        "check-links",
        "check a links file (before and after switching its writers)",
        "Read step_links.json (PATH, else the configured links.file) as the service "
        "reads it and print, as JSON, how many links it holds, how many records it ignores "
        "(not an object, no string param_run_id, or not a valid run id; up to 10 named "
        "with why), whether it is unusable (corrupt, not a "
        "regular file) and whether this user could write it. With --since COPY (a copy "
        "taken before a change, e.g. before the backend's switch), also the links of "
        "COPY that are gone from PATH (lost) or point elsewhere now (changed). Exit 0 "
        "when the file is usable, writable and has lost nothing (ignored records, which "
        "no reader uses and every writer keeps, do not fail it), 1 otherwise.",
    )
    check_links.add_argument("path", nargs="?", type=Path, help="the links file")
    check_links.add_argument("--since", type=Path, help="an earlier copy of the file")

    sign = command(
        "sign-url",
        "print a signed, expiring URL of the service",
        "Print PATH (a path of the service, with its query: quote it in the shell) with "
        "expires= and signature= appended, good for GET and HEAD without the bearer token "
        "for SECONDS. The secret is auth.signing_secret from the config or "
        f"{env_var('auth', 'signing_secret')} (no config file needed then). Exit code 2 when "
        "no secret is set or SECONDS is over auth.max_signed_url_seconds.",
    )
    sign.add_argument("path", metavar="PATH", type=_signable_path)
    sign.add_argument(
        "--expires-in", metavar="SECONDS", type=_seconds, required=True, help="how long it is good"
    )
    sign.add_argument(
        "--base",
        metavar="URL",
        type=_url_base,
        help="print an absolute URL: the service's address as the browser reaches it "
        "(https://export.example.com)",
    )
    command(
        "check-config",
        "validate a config and print the resolved settings",
        "Validate the config (file plus environment overrides) and print the settings "
        "it resolves to, as JSON (the secrets redacted; limits.zip_thread_count is "
        "the thread count zip_threads resolves to). Exit code 2 when invalid.",
    )
    return parser, by_name


def _required_settings(config_path: Path | None) -> Settings:
    settings = resolve_settings(config_path, os.environ)
    if settings is None:
        raise ConfigError(
            "; ".join(
                [
                    *unknown_env_vars(os.environ),
                    f"this command needs --config, ${CONFIG_ENV_VAR}, or the roots or links file "
                    f"in the environment ({ENV_PREFIX}ROOTS_*, {ENV_PREFIX}LINKS_FILE)",
                ]
            )
        )
    return settings


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # Resolved here: create_server() turns getaddrinfo's error into a bare
        # OSError whose (negative) code os.strerror() does not know. An ASCII
        # host goes as bytes, as bind() sends it (a str is IDNA-encoded first,
        # which imports a codec: a service that dropped privileges may not).
        name = host.encode() if host.isascii() else host
        socket.getaddrinfo(name, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as error:
        reason = (
            "not a valid address or host name"
            if error.errno == socket.EAI_NONAME
            else "the host name cannot be resolved"
        )
        raise StartupError(f"cannot listen on {host}:{port}: {reason} ({error.strerror})") from None
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as error:
        raise StartupError(
            f"cannot listen on {host}:{port}: {os.strerror(error.errno or 0)}"
        ) from None


def _shown(host: str, port: int) -> tuple[str, int]:
    return (f"[{host}]" if ":" in host else host, port)


def _serve(settings: Settings, host: str | None, port: int | None) -> None:
    server = settings.server
    sock = _listen(host or server.host, port if port is not None else server.port)
    bound_host, bound_port = sock.getsockname()[:2]
    roots = ", ".join(f"{key}={path}" for key, path in settings.roots)

    def started(_: str) -> None:
        log.info(
            "listening on http://%s:%s; roots: %s; links: %s",
            *_shown(bound_host, bound_port),
            roots,
            settings.links.file,
        )

    app = create_app(settings)
    app.on_startup.append(stop_on_hangup)
    web.run_app(
        app,
        sock=sock,
        print=started,
        # The app's own shutdown gives requests in flight the grace and then cuts
        # them (export_service/http/shutdown.py); aiohttp's, which would wait twice as
        # long, finds nothing left but gets a short backstop.
        shutdown_timeout=CANCEL_WAIT_SECONDS,
        # A client that hangs up cancels its handler at once, so a download in
        # flight closes its files without waiting for its next write to fail.
        handler_cancellation=True,
        **runner_options(app),
    )
    # Also after an idle service stops, which logged nothing: a stop that was
    # asked for is told apart from a crash.
    log.info("stopped listening on http://%s:%s", *_shown(bound_host, bound_port))


def _run_serve(arguments: argparse.Namespace) -> int:
    settings = resolve_settings(arguments.config, os.environ)
    if settings is not None:
        setup_logging(
            settings.logging.level,
            settings.logging.format,
            repeat_seconds=settings.logging.repeated_error_seconds,
        )
        _serve(settings, arguments.host, arguments.port)
        return 0
    with tempfile.TemporaryDirectory(prefix="export-service-sample-") as sample_dir:
        settings = settings_from_mapping(create_sample_tree(Path(sample_dir)), os.environ)
        setup_logging(
            settings.logging.level,
            settings.logging.format,
            repeat_seconds=settings.logging.repeated_error_seconds,
        )
        host = arguments.host or settings.server.host
        port = arguments.port if arguments.port is not None else settings.server.port
        log.info(
            "no config given: serving the sample tree in %s; try "
            "curl http://%s:%s/api/air/export/list/%s",
            sample_dir,
            host,
            port,
            SAMPLE_RENDER_RUN_ID,
        )
        _serve(settings, host, port)
    return 0


@contextlib.contextmanager
def _output(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write, or stdout for '-'; a failed file is removed.
    Opened at once, so a path that cannot be written is one line (exit 2)
    before any work is done, not a traceback once the ZIP is made."""
    if str(path) == "-":
        yield sys.stdout.buffer
        return
    if path.is_dir():
        raise StartupError(
            f"-o {path}: is a folder; name the file to write, such as -o {path / 'export.zip'}"
        )
    if path.exists() and not path.is_file():
        # /dev/null, a named pipe: written as it is (a temporary file
        # renamed over it would replace the device or pipe).
        with _opened(path, path) as handle:
            yield handle
        return
    if not path.parent.is_dir():
        raise StartupError(
            f"-o {path}: the folder {str(path.parent)!r} does not exist; create it first"
        )
    temp = path.with_name(f".{path.name}.part")
    try:
        with _opened(temp, path) as handle:
            yield handle
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def _opened(path: Path, named: Path) -> Iterator[BinaryIO]:
    try:
        handle = path.open("wb")
    except OSError as error:
        raise StartupError(
            f"-o {named}: cannot be written ({os.strerror(error.errno or 0)}); "
            "choose a file in a folder you can write to"
        ) from None
    with handle:
        yield handle


def _run_offline(arguments: argparse.Namespace) -> int:
    settings = _required_settings(arguments.config)
    setup_logging("WARNING", settings.logging.format)
    services = Services.from_settings(settings)
    render_run_id = arguments.render_run_id
    if arguments.command == "link":
        link = services.links.write_link(render_run_id, arguments.param_run_id)
        record = {"render_run_id": render_run_id, **link._asdict()}
        print(json.dumps(record, ensure_ascii=False))
        return 0
    param_run_id = arguments.param_run_id
    selection = Selection.parse(arguments.steps, arguments.prefix)
    if arguments.command == "manifest":
        export = build_export(services, render_run_id, param_run_id, selection=selection)
        print(export.manifest_json().decode())
        _say_missing(render_run_id, export.param_run_id, export.missing, "the manifest", selection)
        return 0
    with _output(arguments.output) as handle:
        archive = plan_export_archive(services, render_run_id, param_run_id, selection=selection)
        for chunk in archive.chunks():
            handle.write(chunk)
    for skipped, why in archive.skipped.items():
        print(f"export-service: left out ({why}): {skipped}", file=sys.stderr)
    _say_missing(render_run_id, archive.param_run_id, archive.missing, "the ZIP", selection)
    return 0


def _say_missing(
    render_run_id: str,
    param_run_id: str | None,
    missing: Sequence[str],
    output: str,
    selection: Selection | None = None,
) -> None:
    """One line on stderr naming the steps with no file (of those selected).
    The exit code stays 0, as the API answers 200 with whatever was found, but
    an export of a mistyped id no longer looks like a success with nothing in it."""
    if not missing:
        return
    named = [
        f"{step} (none under --prefix)"
        if selection is not None and selection.prefixes
        else f"{step} (no param run linked to {render_run_id!r})"
        if step == "param_generation" and param_run_id is None
        else f"{step} (no run {param_run_id if step == 'param_generation' else render_run_id!r})"
        for step in missing
    ]
    selected = selection.steps if selection is not None else STEPS
    found = (
        "nothing was found, so it is empty"
        if len(missing) == len(selected)
        else "the rest is in it"
    )
    print(
        f"export-service: {output} of {render_run_id!r} has no files of {', '.join(named)}: "
        f"{found}",
        file=sys.stderr,
    )


def _run_healthcheck(arguments: argparse.Namespace) -> int:
    # A probe asks the running service; a root that has gone is for /readyz to
    # report (503), not a config error of the probe's own (exit 2, no request
    # made), which failed a liveness probe of a service that was alive.
    environ = {**os.environ, env_var("server", "require_roots"): "false"}
    settings = resolve_settings(arguments.config, environ)
    # Without a config, serve runs the sample tree with the environment's server keys.
    server = settings.server if settings else environment_server_settings(environ)
    host, port = server.host, server.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    path = "/healthz" if arguments.live else "/readyz"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=HEALTHCHECK_TIMEOUT_SECONDS) as answer:
            body = answer.read()
        if b'"degraded"' in body:  # still passing; Docker keeps this in its health log
            print(f"export-service: {url}: 200 {body.decode(errors='replace')}")
        return 0
    except urllib.error.HTTPError as error:
        print(f"export-service: {url}: {error.code} {error.read().decode(errors='replace')}")
    except OSError as error:
        print(f"export-service: {url}: {error}")
    return EXIT_FAILED


def _run_check_links(arguments: argparse.Namespace) -> int:
    path = arguments.path or _required_settings(arguments.config).links.file
    store = LinkStore(Path(os.path.abspath(path)))
    links = store.all_stored_links()
    ignored = store.ignored()
    invalid = sum(1 for link in links.values() if run_id_problem(link.param_run_id))
    report: dict[str, object] = {
        "path": str(store.path),
        "exists": store.path.exists() or store.path.is_symlink(),
        "links": len(links) - invalid,
        # Records no reader uses (the service and the backend's helper pass
        # over them; writers keep them as they are): named, but no failure.
        "ignored": len(ignored),
        "ignored_examples": [
            {"render_run_id": render_run_id, "why": why} for render_run_id, why in ignored[:10]
        ],
        "problem": store.problem(),
        "write_problem": store.write_problem(),
    }
    failed = bool(report["problem"] or report["write_problem"])
    if arguments.since:
        earlier = LinkStore(Path(os.path.abspath(arguments.since)))
        if earlier.problem() or not earlier.path.is_file():
            why = earlier.problem() or "no such file"
            print(f"export-service: --since {arguments.since}: {why}", file=sys.stderr)
            return EXIT_FAILED
        before = earlier.all_stored_links()
        lost = sorted(render_run_id for render_run_id in before if render_run_id not in links)
        changed = sorted(
            r
            for r, link in before.items()
            if r in links and links[r].param_run_id != link.param_run_id
        )
        report["since"] = {
            "path": str(earlier.path),
            "links": len(before),
            "lost": len(lost),
            "changed": len(changed),
            "lost_examples": lost[:10],
        }
        failed = failed or bool(lost)
    print(json.dumps(report, indent=2))
    return EXIT_FAILED if failed else 0


def _run_check_config(arguments: argparse.Namespace) -> int:
    settings = _required_settings(arguments.config)
    resolved = settings.model_dump(mode="json")
    # What zip_threads = 0 becomes here (the CPUs usable, a container's quota
    # included): not a key of the file, printed so the quota can be seen taking effect.
    resolved["limits"]["zip_thread_count"] = settings.limits.zip_thread_count
    for secret in ("token", "signing_secret", "previous_signing_secret"):
        if resolved["auth"][secret]:
            resolved["auth"][secret] = "<redacted>"
    print(json.dumps(resolved, indent=2))
    return 0


def _auth_settings(config_path: Path | None) -> AuthSettings:
    """``[auth]`` of the config, or, with no config file, of the environment
    alone (sign-url needs only the secret)."""
    settings = resolve_settings(config_path, os.environ)
    if settings is not None:
        return settings.auth
    problems = unknown_env_vars(os.environ)
    overrides = env_overrides(os.environ).get("auth", {})
    try:
        auth = AuthSettings.model_validate(overrides)
    except ValidationError as error:
        for item in error.errors():
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(f"{env_var('auth', str(item['loc'][0]))}: {message}")
    if problems:
        raise ConfigError("; ".join(problems))
    return auth


def _run_sign_url(arguments: argparse.Namespace) -> int:
    auth = _auth_settings(arguments.config)
    if not auth.signing_secret:
        raise StartupError(
            "sign-url: no signing secret: set auth.signing_secret in the config or "
            f"{env_var('auth', 'signing_secret')}"
        )
    if arguments.expires_in > auth.max_signed_url_seconds:
        raise StartupError(
            f"sign-url: --expires-in {arguments.expires_in} is over "
            f"auth.max_signed_url_seconds ({auth.max_signed_url_seconds}): the service "
            "would refuse the URL"
        )
    try:
        url = sign_url(
            (arguments.base or "") + arguments.path, arguments.expires_in, auth.signing_secret
        )
    except ValueError as error:  # PATH already signed, or too long to fetch
        raise StartupError(f"sign-url: {error}") from None
    print(url)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser()[0].parse_args(argv)
    try:
        if arguments.command == "serve":
            return _run_serve(arguments)
        if arguments.command == "check-config":
            return _run_check_config(arguments)
        if arguments.command == "healthcheck":
            return _run_healthcheck(arguments)
        if arguments.command == "check-links":
            return _run_check_links(arguments)
        if arguments.command == "sign-url":
            return _run_sign_url(arguments)
        return _run_offline(arguments)
    except ConfigError as error:
        print(f"export-service: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except StartupError as error:
        print(f"export-service: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except ExportServiceError as error:
        print(f"export-service: {error.code}: {error.message}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # Whoever read the output stopped early (``| head``): end quietly, as
        # cat does, and point stdout at /dev/null so that Python's own flush at
        # exit does not fail on the same pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
