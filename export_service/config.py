"""Settings: one TOML file, loaded into a frozen pydantic model.

Errors name the offending key (``roots.render: ...``) so that ops can fix a
file from one line of output.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from .errors import ConfigError

CONFIG_ENV_VAR = "EXPORT_SERVICE_CONFIG"
MIB = 1024 * 1024


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(path)!r}")
    return path


def _existing_folder(path: Path) -> Path:
    _absolute(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise ValueError(f"{str(path)!r} {what}")
    return path


def _links_file(path: Path) -> Path:
    _absolute(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder, not a file")
    return path


def _url_prefix(prefix: str) -> str:
    if not prefix.startswith("/") or any(char in prefix for char in "?#% \\"):
        raise ValueError(f"must be a URL path starting with '/', got {prefix!r}")
    return prefix.rstrip("/")


def _url_base(base: str) -> str:
    if base and not base.startswith(("http://", "https://")):
        raise ValueError(f"must be empty or an absolute http(s) URL, got {base!r}")
    return base.rstrip("/")


ExistingFolder = Annotated[Path, AfterValidator(_existing_folder)]
UrlPrefix = Annotated[str, AfterValidator(_url_prefix)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)


class RootsSettings(_Section):
    """The three output roots the service reads; it never writes to them."""

    render: ExistingFolder
    midi_generation: ExistingFolder
    param_generation: ExistingFolder


class LinksSettings(_Section):
    """step_links.json; it and its folder may be absent until the first write."""

    file: Annotated[Path, AfterValidator(_links_file)]


class UrlSettings(_Section):
    """How manifest URLs are written. ``base`` prefixes all three when set."""

    base: Annotated[str, AfterValidator(_url_base)] = ""
    render: UrlPrefix = "/api/audio"
    midi_generation: UrlPrefix = "/api/midi-generation/output"
    param_generation: UrlPrefix = "/api/param-generation/output"


class LimitsSettings(_Section):
    io_threads: int = Field(default=8, ge=1, le=256)
    read_chunk_bytes: int = Field(default=MIB, ge=4096, le=64 * MIB)
    batch_bytes: int = Field(default=MIB, ge=4096, le=64 * MIB)


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    roots: RootsSettings
    links: LinksSettings
    urls: UrlSettings = UrlSettings()
    limits: LimitsSettings = LimitsSettings()


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "is required but missing"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def settings_from_mapping(data: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_settings(path: Path) -> Settings:
    """Read and validate one TOML file; :class:`ConfigError` on any problem."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    try:
        return settings_from_mapping(data)
    except ConfigError as error:
        raise ConfigError(f"config file {str(path)!r}: {error}") from None


def config_path_from_env() -> Path | None:
    value = os.environ.get(CONFIG_ENV_VAR, "").strip()
    return Path(value) if value else None
