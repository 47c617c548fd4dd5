"""Settings: one TOML file, loaded into a frozen pydantic model.

Errors name the offending key (``roots.render: ...``) so that ops can fix a
file from one line of output. Every key can also come from the environment as
``EXPORT_SERVICE_<SECTION>_<KEY>`` (``EXPORT_SERVICE_ROOTS_RENDER``), which
wins over the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from .cpus import usable_cpus
from .errors import ConfigError

ENV_PREFIX = "EXPORT_SERVICE_"
CONFIG_ENV_VAR = ENV_PREFIX + "CONFIG"
MIB = 1024 * 1024


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(path)!r}")
    return path


def _folder(path: Path) -> Path:
    """Absolute, and a folder if it exists (whether it must exist is
    ``server.require_roots``)."""
    _absolute(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a folder")
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


Folder = Annotated[Path, AfterValidator(_folder)]
UrlPrefix = Annotated[str, AfterValidator(_url_prefix)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Section):
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on.")
    require_roots: bool = Field(
        default=True,
        description="true: a root that does not exist stops the service at start (a typo "
        "should). false: start anyway (sidecars whose folders may appear later); /readyz "
        "answers 503 until the root appears.",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM/SIGINT: stop accepting, let downloads in flight finish for "
        "this long, then cut the rest and exit 0 within 2 s more. Give the orchestrator's "
        "kill timeout more than this plus 2 s.",
    )


class RootsSettings(_Section):
    """The three output roots the service reads; it never writes to them."""

    render: Folder = Field(
        description="The render step's output root (`<render root>/<render_run_id>/**`). "
        "Absolute path of a folder; only read."
    )
    midi_generation: Folder = Field(
        description="The MIDI step's output root (`<timestamp>_<run_id>` folders). "
        "Absolute path of a folder; only read."
    )
    param_generation: Folder = Field(
        description="The param step's output root (`<timestamp>_<param_run_id>` folders). "
        "Absolute path of a folder; only read."
    )


class LinksSettings(_Section):
    """step_links.json; it and its folder may be absent until the first write."""

    file: Annotated[Path, AfterValidator(_links_file)] = Field(
        description="step_links.json (render_run_id -> param_run_id), shared with the AIR "
        "backend. Absolute path; it and its folder may be absent until the first link "
        "is written."
    )


class UrlSettings(_Section):
    """How manifest URLs are written. ``base`` prefixes all three when set."""

    base: Annotated[str, AfterValidator(_url_base)] = Field(
        default="",
        description='Put in front of every manifest URL: "" (URLs relative to the host, '
        "as the AIR backend's are) or an absolute http(s) URL such as "
        '"https://air.example.com".',
    )
    render: UrlPrefix = Field(
        default="/api/audio",
        description="URL prefix of the render files in the manifest; the service serves it.",
    )
    midi_generation: UrlPrefix = Field(
        default="/api/midi-generation/output",
        description="URL prefix of the MIDI files in the manifest; the service serves it.",
    )
    param_generation: UrlPrefix = Field(
        default="/api/param-generation/output",
        description="URL prefix of the param files in the manifest; the service serves it.",
    )


class LimitsSettings(_Section):
    io_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Threads for blocking file work (manifest scans, planning ZIPs, single "
        "files, the links file), shared by all requests.",
    )
    # That work is Python under the GIL, so threads beyond the cores only
    # queue for it and make the event loop wait (docs: Performance).
    zip_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads that produce ZIP bytes, shared by all downloads; 0: one per CPU "
        "the process may run on, capped by the container's CPU quota (cgroup v2 cpu.max, "
        "v1 cpu.cfs_quota_us/cpu.cfs_period_us, rounded up). `check-config` shows what it "
        "resolves to as limits.zip_thread_count.",
    )
    read_chunk_bytes: int = Field(
        default=MIB,
        ge=4096,
        le=64 * MIB,
        description="One read from a file while streaming a ZIP (bytes).",
    )
    batch_bytes: int = Field(
        default=MIB,
        ge=4096,
        le=64 * MIB,
        description="ZIP bytes produced per hop off the event loop (bytes).",
    )
    max_concurrent_zips: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="ZIP downloads (GET or HEAD: both plan the whole ZIP) planned or streaming "
        "at once; one more gets 503 too_many_downloads with Retry-After: 5.",
    )
    send_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A client that took no byte for this long has its download (ZIP or file "
        "URL) cut, counted as stalled; one that keeps reading, however slowly, is never cut.",
    )
    descriptor_reserve: int = Field(
        default=32,
        ge=0,
        le=1_000_000,
        description="/readyz answers 503 while fewer file descriptors than this are free "
        "(soft RLIMIT_NOFILE minus the open ones).",
    )
    max_files_per_export: int = Field(
        default=250_000,
        ge=1,
        le=100_000_000,
        description="An export (manifest or ZIP, all three steps together) of more files is "
        "refused with 422 export_too_large while its run is scanned, before it is held in "
        "memory. Each listed file costs about 0.55 KB at a manifest's peak and 0.8 KB while "
        "its ZIP is planned.",
    )

    @property
    def zip_thread_count(self) -> int:
        """``zip_threads``, with 0 resolved to the CPUs this process may use
        (its container's CPU quota included)."""
        return self.zip_threads or usable_cpus()


class AuthSettings(_Section):
    token: str = Field(
        default="",
        repr=False,
        description="When set, every request but /healthz, /readyz and /metrics needs "
        "`Authorization: Bearer <token>`. Best given as EXPORT_SERVICE_AUTH_TOKEN.",
    )


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The lowest level logged."
    )
    format: Literal["json", "text"] = Field(
        default="json",
        description="json: one object per line. text: control characters escaped, "
        "tracebacks indented, so one record never looks like two.",
    )
    repeated_error_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="An out-of-resources error (no descriptor left to accept a connection "
        "with...) is logged at most once this often per message, without traceback, with "
        "the count of repeats suppressed.",
    )


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    roots: RootsSettings
    links: LinksSettings
    urls: UrlSettings = UrlSettings()
    limits: LimitsSettings = LimitsSettings()
    auth: AuthSettings = AuthSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _roots_exist_when_required(self) -> Self:
        if self.server.require_roots:
            for key, path in self.roots:
                if not path.is_dir():
                    raise ValueError(
                        f"roots.{key}: {str(path)!r} does not exist "
                        "(set server.require_roots = false to start without it)"
                    )
        return self


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``EXPORT_SERVICE_<SECTION>_<KEY>`` values, as a config mapping."""
    found: dict[str, dict[str, str]] = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key in model.model_fields:
            value = environ.get(env_var(section, key))
            if value is not None:
                found.setdefault(section, {})[key] = value
    return found


def env_var(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _describe(error: ValidationError, from_env: set[tuple[str, str]], source: str) -> str:
    """One line per problem, naming where the bad value came from: the
    variable for an environment override, else the key (after ``source``)."""
    lines = []
    for item in error.errors():
        location = tuple(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "is required but missing"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        if location[:2] in from_env:
            lines.append(f"{env_var(*location[:2])}: {message}")
            continue
        line = f"{'.'.join(location)}: {message}" if location else message
        lines.append(f"{source}: {line}" if source else line)
    return "; ".join(lines)


def settings_from_mapping(
    data: dict[str, Any], environ: Mapping[str, str] | None = None, source: str = ""
) -> Settings:
    """Validate a config mapping, with the environment's overrides on top.
    ``source`` (such as ``config file '/etc/x.toml'``) starts the errors about
    the mapping's own keys."""
    merged = {section: dict(values) for section, values in data.items()}
    overrides = env_overrides(environ or {})
    for section, values in overrides.items():
        if not isinstance(merged.get(section, {}), dict):
            raise ConfigError(f"{source + ': ' if source else ''}{section}: must be a table")
        merged.setdefault(section, {}).update(values)
    from_env = {(section, key) for section, values in overrides.items() for key in values}
    try:
        return Settings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, from_env, source)) from None


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate one TOML file (plus overrides from ``environ``);
    :class:`ConfigError` on any problem."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    return settings_from_mapping(data, environ, source=f"config file {str(path)!r}")


def resolve_settings(config_path: Path | None, environ: Mapping[str, str]) -> Settings | None:
    """The settings to run with: the file (``--config`` or
    ``EXPORT_SERVICE_CONFIG``) with environment overrides; or, with no file,
    the environment alone when it names a root or the links file; else None
    (then ``serve`` runs the sample tree, other overrides applied)."""
    path = config_path or Path(environ.get(CONFIG_ENV_VAR, "").strip() or ".")
    if path != Path("."):
        return load_settings(path, environ)
    overrides = env_overrides(environ)
    if "roots" in overrides or "links" in overrides:
        return settings_from_mapping({}, environ)
    return None
