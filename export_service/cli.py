"""Command line: ``export-service serve [--config PATH]``, ``export-service link RID PID``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .app import create_app
from .config import (
    CONFIG_ENV_VAR,
    Settings,
    config_path_from_env,
    load_settings,
    settings_from_mapping,
)
from .errors import ConfigError, ExportServiceError
from .links import LinkStore
from .run_ids import check_param_run_id, check_render_run_id
from .sample import SAMPLE_RENDER_RUN_ID, create_sample_tree

log = logging.getLogger("export_service")

EXIT_CONFIG_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-service",
        description="Serve an AIR project's artifacts as a JSON manifest or one streamed ZIP.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="start the HTTP service",
        description="Start the HTTP service. Without --config (or "
        f"{CONFIG_ENV_VAR}) it serves a built-in sample tree on 127.0.0.1:8080.",
    )
    serve.add_argument("--config", type=Path, help=f"TOML config file (default: ${CONFIG_ENV_VAR})")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    link = commands.add_parser(
        "link",
        help="link a render run to its param run in the links file",
        description="Set render_run_id -> param_run_id in the configured step_links.json, "
        "with the same locking as the service (safe while it runs).",
    )
    link.add_argument("render_run_id")
    link.add_argument("param_run_id")
    link.add_argument("--config", type=Path, help=f"TOML config file (default: ${CONFIG_ENV_VAR})")
    return parser


def _link(config_path: Path | None, render_run_id: str, param_run_id: str) -> int:
    if config_path is None:
        raise ConfigError(f"link needs --config or {CONFIG_ENV_VAR}")
    settings = load_settings(config_path)
    try:
        check_render_run_id(render_run_id)
        check_param_run_id(param_run_id)
        record = LinkStore(settings.links.file).link(render_run_id, param_run_id)
    except ExportServiceError as error:
        print(f"export-service: {error.code}: {error.message}", file=sys.stderr)
        return 1
    print(json.dumps({"render_run_id": render_run_id, **record}, ensure_ascii=False))
    return 0


def _serve(settings: Settings, host: str | None, port: int | None) -> None:
    server = settings.server
    web.run_app(
        create_app(settings),
        host=host or server.host,
        port=port if port is not None else server.port,
        print=None,
        access_log=log.getChild("access"),
        # A client that hangs up cancels its handler at once, so a download in
        # flight closes its files without waiting for its next write to fail.
        handler_cancellation=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config_path = arguments.config or config_path_from_env()
    try:
        if arguments.command == "link":
            return _link(config_path, arguments.render_run_id, arguments.param_run_id)
        if config_path is not None:
            settings = load_settings(config_path)
            log.info(
                "serving with config %s on %s:%s",
                config_path,
                arguments.host or settings.server.host,
                arguments.port or settings.server.port,
            )
            _serve(settings, arguments.host, arguments.port)
            return 0
        with tempfile.TemporaryDirectory(prefix="export-service-sample-") as sample_dir:
            settings = settings_from_mapping(create_sample_tree(Path(sample_dir)))
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
    except ConfigError as error:
        print(f"export-service: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
