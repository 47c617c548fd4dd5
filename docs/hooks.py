"""mkdocs hooks (mkdocs.yml, ``hooks:``): what the docs say about the code is
made from the code at build time, so it cannot drift.

A page asks for a generated part with an HTML comment on a line of its own,
``<!-- generated: NAME -->``, NAME one of :data:`GENERATORS`:

- ``openapi``: the HTTP API, from the OpenAPI document the service serves
  (``export_service.http.openapi``);
- ``config``: every configuration key with its type, default, environment
  variable and description, from the settings model (``export_service.config``);
- ``cli``: every command's ``--help``, from the argparse parser (``export_service.cli``);
- ``metrics``: every series ``/metrics`` exposes, from the registry
  (``export_service.obs.metrics``);
- ``log_fields``: the fields of a JSON log line and of an access line, from
  the formatter and the access log (``export_service.obs.logs``, ``export_service.http.access``).

An unknown NAME, a key without a description, a log field without its
meaning: the build fails (``mkdocs build --strict`` runs in CI).

The diagrams: each Graphviz source ``docs/diagrams/NAME.dot`` is rendered to
``diagrams/NAME.svg`` in the site by ``dot`` at build time (no SVG is
committed, nothing is fetched when a page is viewed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOCS = Path(__file__).resolve().parent
DIAGRAMS = DOCS / "diagrams"
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.M)


# ---------------------------------------------------------------- HTTP API


def _sample_settings() -> Any:
    """The settings of ``export-service serve`` without a config: the sample tree."""
    from export_service.config import settings_from_mapping
    from export_service.sample import create_sample_tree

    with tempfile.TemporaryDirectory() as folder:
        return settings_from_mapping(create_sample_tree(Path(folder)))


def openapi_document() -> dict[str, Any]:
    """What ``GET /api/air/export/openapi.json`` answers with the default config."""
    from export_service.http.openapi import openapi_document as document

    served: dict[str, Any] = document(_sample_settings())
    return served


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def openapi_markdown() -> str:
    document = openapi_document()
    lines = [
        f"Generated from the OpenAPI {document['openapi']} document the service serves "
        f"at `GET /api/air/export/openapi.json` (version {document['info']['version']}, "
        "default configuration). `curl -s http://127.0.0.1:8080/api/air/export/openapi.json` "
        "prints it whole, schemas included.",
        "",
        "| Method | Path | What it does |",
        "| --- | --- | --- |",
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            lines.append(f"| {method.upper()} | `{path}` | {_cell(operation['summary'])} |")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            lines += ["", f"### {method.upper()} `{path}`", "", _cell(operation["summary"]), ""]
            parameters = operation.get("parameters", [])
            if parameters:
                lines += ["| Parameter | In | Required | Meaning |", "| --- | --- | --- | --- |"]
                for parameter in parameters:
                    lines.append(
                        f"| `{parameter['name']}` | {parameter['in']} | "
                        f"{'yes' if parameter.get('required') else 'no'} | "
                        f"{_cell(parameter.get('description', ''))} |"
                    )
                lines.append("")
            body = operation.get("requestBody")
            if body:
                schema = next(iter(body["content"].values()))["schema"]
                lines += [f"Request body: `{schema.get('$ref', '').rsplit('/', 1)[-1]}`.", ""]
            lines += ["| Status | Meaning | Body |", "| --- | --- | --- |"]
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                bodies = []
                for media_type, media in content.items():
                    ref = media.get("schema", {}).get("$ref", "")
                    bodies.append(f"`{media_type}`" + (f" {ref.rsplit('/', 1)[-1]}" if ref else ""))
                lines.append(
                    f"| {status} | {_cell(response['description'])} | {', '.join(bodies) or '-'} |"
                )
    lines += ["", "### Schemas", ""]
    for name, schema in document["components"]["schemas"].items():
        lines += [f"`{name}`:", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------- configuration


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f'`"{value}"`' for value in typing.get_args(annotation))
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, "path" if annotation.__name__.endswith("Path") else "string"
        )
    return str(annotation)


def _bounds(metadata: list[Any]) -> str:
    words = []
    for rule in metadata:
        if isinstance(rule, Ge):
            words.append(f">= {rule.ge}")
        elif isinstance(rule, Gt):
            words.append(f"> {rule.gt}")
        elif isinstance(rule, Le):
            words.append(f"<= {rule.le}")
        elif isinstance(rule, Lt):
            words.append(f"< {rule.lt}")
    return ", ".join(words)


def config_keys() -> Iterator[tuple[str, str, str, str, str, str]]:
    """(key, type, default, allowed, environment variable, description) of
    every key of the settings model, section by section."""
    from export_service.config import Settings, env_var

    for section, section_field in Settings.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, field in model.model_fields.items():
            if not field.description:
                raise ValueError(f"config key {section}.{key} has no description (config.py)")
            if field.default is PydanticUndefined:
                default = "required"
            elif isinstance(field.default, bool):
                default = f"`{str(field.default).lower()}`"
            else:
                default = f"`{json.dumps(field.default)}`"
            yield (
                f"{section}.{key}",
                _type_name(field.annotation),
                default,
                _bounds(field.metadata),
                env_var(section, key),
                field.description,
            )


def config_markdown() -> str:
    lines: list[str] = []
    section = ""
    for key, kind, default, allowed, variable, description in config_keys():
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            lines += ["", f"### `[{section}]`", ""]
        shown = f"{kind}, {allowed}" if allowed else kind
        given = "required" if default == "required" else f"default {default}"
        lines += [
            f"- **`{key}`**: {shown}; {given}; environment `{variable}`.<br>",
            f"  {description}",
        ]
    return "\n".join(lines).strip() + "\n"


# ---------------------------------------------------------------------- CLI


def cli_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser and each command's, by name."""
    from export_service import cli

    return cli._parser()


def cli_markdown() -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps at the terminal's width
    try:
        parser, commands = cli_parsers()
        lines = ["### `export-service --help`", "", "```text", parser.format_help().rstrip(), "```"]
        for name, sub in commands.items():
            lines += ["", f"### `export-service {name}`", "", "```text"]
            lines += [sub.format_help().rstrip(), "```"]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(lines)


# ------------------------------------------------------------------ metrics


def metric_series() -> Iterator[tuple[str, str, str, str]]:
    """(name as exposed, type, labels, help) of every metric family of a new
    application's registry, in registry order."""
    from prometheus_client.metrics import MetricWrapperBase

    from export_service.obs.metrics import Metrics

    metrics = Metrics()
    labels: dict[str, tuple[str, ...]] = {}
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            # prometheus_client keeps a metric's label names private
            # (_labelnames; no public accessor, and a labelled metric has no
            # sample to read them from until a child is made): pinned by
            # tests/test_metrics.py, which gives every metric a child and
            # checks its samples carry exactly these labels.
            labels[wrapper._name] = tuple(wrapper._labelnames)
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        yield name, family.type, ", ".join(labels.get(family.name, ())), family.documentation


def metrics_markdown() -> str:
    lines = ["| Series | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for name, kind, labels, documentation in metric_series():
        shown = f"`{labels}`" if labels else "-"
        lines.append(f"| `{name}` | {kind} | {shown} | {_cell(documentation)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------- logs

# What each field of every JSON line means; the build fails when the
# formatter writes a field this does not name.
RECORD_FIELDS = {
    "time": "when the line was made, UTC, ISO 8601 with milliseconds",
    "level": "`DEBUG`, `INFO`, `WARNING` or `ERROR`",
    "logger": "who wrote it: one of the loggers below",
    "message": "the line as text",
    "request_id": "the request's id (the client's `X-Request-ID`, else a new one; echoed in "
    "the response): every line written while serving that request carries it",
    "exception": "the traceback, on errors that have one",
}


def record_fields() -> list[str]:
    """The fields a JSON line can carry, from a line the formatter writes."""
    from export_service.obs.logs import JsonFormatter, request_id

    record = logging.LogRecord("export_service", logging.ERROR, __file__, 1, "m", None, None)
    try:
        raise RuntimeError("shown")
    except RuntimeError as error:
        record.exc_info = (RuntimeError, error, error.__traceback__)
    token = request_id.set("r")
    try:
        record.request_id = request_id.get()
        fields = list(json.loads(JsonFormatter().format(record)))
    finally:
        request_id.reset(token)
    return fields


def log_fields_markdown() -> str:
    from export_service.http.access import ACCESS_FIELDS, ENDINGS
    from export_service.obs.logs import LOGGER_NAMES

    lines = ["Every line:", "", "| Field | Meaning |", "| --- | --- |"]
    for field in record_fields():
        if field not in RECORD_FIELDS:
            raise ValueError(f"log field {field!r} has no meaning in docs/hooks.py")
        lines.append(f"| `{field}` | {_cell(RECORD_FIELDS[field])} |")
    lines += [
        "",
        "The loggers (their names are the module names of an earlier layout, kept",
        "because log queries select on them):",
        "",
        "| Logger | Writes |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {_cell(what)} |" for name, what in LOGGER_NAMES.items()]
    lines += [
        "",
        "An access line (logger `export_service.access`, one per request, however it ended) adds:",
        "",
        "| Field | Meaning |",
        "| --- | --- |",
    ]
    lines += [f"| `{field}` | {_cell(meaning)} |" for field, meaning in ACCESS_FIELDS.items()]
    lines += ["", "`ended` is one of:", "", "| Value | Meaning |", "| --- | --- |"]
    lines += [f"| `{value}` | {_cell(meaning)} |" for value, meaning in ENDINGS.items()]
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "openapi": openapi_markdown,
    "config": config_markdown,
    "cli": cli_markdown,
    "metrics": metrics_markdown,
    "log_fields": log_fields_markdown,
}


def generated(markdown: str) -> str:
    """``markdown`` with each ``<!-- generated: NAME -->`` line replaced."""

    def one(match: re.Match[str]) -> str:
        if match[1] not in GENERATORS:
            raise ValueError(f"unknown generated part {match[1]!r}")
        return GENERATORS[match[1]]()

    return MARKER.sub(one, markdown)


# ----------------------------------------------------------------- diagrams


def render_diagram(source: Path) -> bytes:
    """The SVG of one Graphviz source."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("Graphviz's dot is not installed (apt-get install graphviz)")
    done = subprocess.run([dot, "-Tsvg", str(source)], capture_output=True, check=True)
    return done.stdout


# ---------------------------------------------------------- mkdocs events


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for source in sorted(DIAGRAMS.glob("*.dot")):
        files.append(
            File.generated(config, f"diagrams/{source.stem}.svg", content=render_diagram(source))
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return generated(markdown)
