"""Settings: one TOML file, loaded into a frozen pydantic model.

Errors name the offending key (``roots.render: ...``) so that ops can fix a
file from one line of output. Every key can also come from the environment as
``EXPORT_SERVICE_<SECTION>_<KEY>`` (``EXPORT_SERVICE_ROOTS_RENDER``), which
wins over the file.

The environment overlay is hand-written (:func:`env_overrides`, a dozen
lines), not pydantic-settings. Tried (pydantic-settings 2.16.3, a
``BaseSettings`` of these sections with ``env_nested_delimiter="_"``,
``env_nested_max_split=1``), it gives other errors than these, and costs:

- a comma-separated list (``EXPORT_SERVICE_CORS_ALLOWED_ORIGINS=https://a,https://b``)
  is JSON-decoded first: ``error parsing value for field "cors" from source
  "EnvSettingsSource"`` instead of the settings;
- a bad value's error reads ``server.port: Input should be a valid
  integer...``, not naming the variable it came from (here:
  ``EXPORT_SERVICE_SERVER_PORT: ...``), since validation no longer knows
  which source gave a value;
- a typo (``EXPORT_SERVICE_SERVER_PROT``) is ``server.prot: Extra inputs are
  not permitted`` instead of ``unknown variable (did you mean
  EXPORT_SERVICE_SERVER_PORT?)``, and a lower-case name
  (``export_service_server_port``) is silently taken instead of refused;
- importing it costs every process that loads the config (each CLI command,
  the container's healthcheck at every interval, the backend importing
  ``export_service.links``) 30% more CPU, 0.193 s -> 0.254 s, and 4.4 MiB
  more memory (farm-bench, medians of 15 paired runs), brings python-dotenv
  into the backend's light install, and would raise the lowest pydantic
  from 2.6 to 2.7.

Each error could be restored with code around the library (no decoding,
a filtered environment, our own record of which keys came from it), which
would leave it only the split of a variable's name into section and key:
:func:`env_var` does that in one line.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    TypeAdapter,
    ValidationError,
)

from .core.cpus import usable_cpus
from .errors import RETRY_AFTER_SECONDS, ConfigError
from .signed_urls import MIN_SECRET_LENGTH

ENV_PREFIX = "EXPORT_SERVICE_"
CONFIG_ENV_VAR = ENV_PREFIX + "CONFIG"
# Variables of the prefix that are no config key: the file's path, and the
# AIR backend's address of this service (fastapi_proxy; a shell or a
# compose file may hand both programs one environment).
OTHER_ENV_VARS = frozenset({CONFIG_ENV_VAR, ENV_PREFIX + "URL"})
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


def _comma_separated(value: object) -> object:
    """A list, or (from the environment) a comma-separated string of items."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _signing_secret(secret: str) -> str:
    if secret and len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"must be empty or at least {MIN_SECRET_LENGTH} characters, got {len(secret)}"
            " (make one with: openssl rand -base64 32)"
        )
    return secret


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
        description="On SIGTERM, SIGINT or SIGHUP: stop accepting, let downloads in flight "
        "finish for this long, then cut the rest and exit 0 within 2 s more. Give the "
        "orchestrator's kill timeout more than this plus 2 s.",
    )
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], BeforeValidator(_comma_separated)] = (
        Field(
            default=(),
            description=(
                "Addresses or networks (CIDR) of the proxies in front of the service (the"
                " AIR backend, nginx). A request whose peer is one of them is counted, for"
                " limits.max_zips_per_client, as coming from the address its"
                " X-Forwarded-For names: the last one in that list that is not itself a"
                " trusted proxy. From any other peer X-Forwarded-For is ignored. In the"
                " environment: comma-separated."
            ),
        )
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
    max_bytes: int = Field(
        default=16 * MIB,
        ge=2,
        le=16 * 1024 * MIB,
        description=(
            "The largest links file the service parses (bytes). A larger one is not read:"
            " manifests go on without links, /readyz names it, a PUT answers 503"
            " links_file_too_large, and the log says so once per change of the file."
            " Parsing takes about 15 times the file's size in memory and holds the GIL."
        ),
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
        description="Threads for blocking file work (single files, the links file, "
        "readiness), shared by all requests; run folders are scanned on "
        "limits.scan_threads.",
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
        f"at once; one more gets 503 too_many_downloads with Retry-After: {RETRY_AFTER_SECONDS}.",
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
        description="/readyz reports the service as degraded (still 200) while fewer file "
        "descriptors than this are free (soft RLIMIT_NOFILE minus the open ones).",
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
    max_folders_per_export: int = Field(
        default=50_000,
        ge=1,
        le=100_000_000,
        description=(
            "An export (manifest or ZIP) whose run folders hold more folders than this"
            " (the run folders themselves included) is refused with 422 export_too_large"
            " while it is scanned: a run of empty folders costs as much to list as one"
            " of files."
        ),
    )
    scan_threads: int = Field(
        default=4,
        ge=1,
        le=256,
        description=(
            "Threads that scan run folders (manifests, planning ZIPs), apart from the"
            " I/O threads: however many scans run, file URLs, the links and readiness"
            " keep limits.io_threads of their own. A scan whose client hangs up, or that"
            " is still running at shutdown, stops at its next folder."
        ),
    )
    max_zips_per_client: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description=(
            "Of limits.max_concurrent_zips, how many one client (one address; see"
            " server.trusted_proxies) may hold at once; one more gets 429"
            " too_many_downloads_per_client with Retry-After. A download manager's"
            " parallel range requests count one each."
        ),
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
    signing_secret: Annotated[str, AfterValidator(_signing_secret)] = Field(
        default="",
        repr=False,
        description="When set (32 characters or more), a GET or HEAD URL carrying a valid "
        "`expires` and `signature` (made with this secret: `export-service sign-url`, or "
        "`export_service.signed_urls.sign_url` in the backend) is let in without the bearer "
        "token, until it expires. Empty: signed URLs are refused (403). Best given as "
        "EXPORT_SERVICE_AUTH_SIGNING_SECRET.",
    )
    previous_signing_secret: Annotated[str, AfterValidator(_signing_secret)] = Field(
        default="",
        repr=False,
        description="During a rotation, the secret being replaced: URLs signed with it are "
        "still accepted (never signed with it). Empty once the old URLs have expired.",
    )
    max_signed_url_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        le=366 * 24 * 3600,
        description="A signed URL whose expiry lies further ahead than this (seconds; 7 days, "
        "as S3) is refused with 403, so that a leaked URL is good for this long at most.",
    )

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        """The secrets a signed URL may be made with: the current one, then
        the previous one (blanks left out)."""
        return tuple(s for s in (self.signing_secret, self.previous_signing_secret) if s)


def _origin(origin: str) -> str:
    """An origin as browsers send it in ``Origin``: ``scheme://host[:port]``,
    scheme and host in lower case (taken in any case), no default port, no
    path; or ``*``."""
    if origin == "*":
        return origin
    found = _ORIGIN.fullmatch(origin)
    if found is None:
        raise ValueError(
            f"must be an origin, scheme://host[:port] (no path, no trailing '/'), or '*';"
            f" got {origin!r}"
        )
    scheme, host, port = found["scheme"].lower(), found["host"].lower(), found["port"]
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"the port must be 1 to 65535; got {origin!r}")
    if port is not None and int(port) == {"http": 80, "https": 443}[scheme]:
        raise ValueError(
            f"browsers send {scheme}://{host} without its default port :{port}; got {origin!r}"
        )
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE | re.ASCII,
)


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' allows every origin and must then be the only item")
    return tuple(dict.fromkeys(origins))


class CorsSettings(_Section):
    """Cross-origin downloads: which pages (origins) may read the service's answers."""

    allowed_origins: Annotated[
        tuple[Annotated[str, AfterValidator(_origin)], ...],
        BeforeValidator(_comma_separated),
        AfterValidator(_origins),
    ] = Field(
        default=(),
        description=(
            "Origins (`scheme://host[:port]`, exactly as a browser sends them in Origin:"
            " no path, no trailing '/', no default port; scheme and host are compared in"
            ' lower case) whose pages may read the export API and file URLs: "*" alone'
            " allows any. Empty (the default): no CORS at all, every answer as without"
            " this section. /healthz, /readyz and /metrics never answer CORS. In the"
            " environment: comma-separated."
        ),
    )
    max_age_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description=(
            "How long a browser may cache a preflight's answer (Access-Control-Max-Age);"
            " browsers cap it (Chromium: 7200)."
        ),
    )


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class LoggingSettings(_Section):
    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = Field(
        default="INFO", description="The lowest level logged, in any case (debug, Info)."
    )
    format: Annotated[Literal["json", "text", "auto"], BeforeValidator(_lower)] = Field(
        default="auto",
        description="json: one object per line. text: the same fields, as `time level logger "
        "message key=value...`, control characters escaped, tracebacks indented, so one "
        "record never looks like two. auto: text when stderr is a terminal (make run), "
        "JSON otherwise (a container, a pipe, a file). Any case.",
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
    cors: CorsSettings = CorsSettings()
    logging: LoggingSettings = LoggingSettings()


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


def _config_env_vars() -> dict[str, tuple[str, str]]:
    """Every config key's variable -> (section, key)."""
    found = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key in model.model_fields:
            found[env_var(section, key)] = (section, key)
    return found


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """A problem for each ``EXPORT_SERVICE_*`` variable that is no config key
    (nor another variable of the service), naming the nearest known one: a
    typo (``EXPORT_SERVICE_SERVER_PROT``) would otherwise change nothing,
    silently. Names are matched as the environment spells them (upper case):
    ``EXPORT_SERVICE_server_port`` is refused, naming
    ``EXPORT_SERVICE_SERVER_PORT``."""
    known = sorted({*_config_env_vars(), *OTHER_ENV_VARS})
    problems = []
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX) and name not in known:
            if name.upper() in known:
                hint = f"variable names are upper case: {name.upper()}"
            else:
                nearest = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
                hint = f"did you mean {nearest[0]}?" if nearest else f"the keys are {ENV_PREFIX}..."
            problems.append(f"{name}: unknown variable ({hint})")
    return problems


def _section_keys(section: str) -> list[str]:
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return [key for key, field in model.model_fields.items() if field.is_required()]


def _order(location: tuple[str, ...]) -> tuple[int, int]:
    """Where a problem at ``location`` comes in the message: by section, then
    key, as the settings declare them (the file's own order)."""
    sections = list(Settings.model_fields)
    if not location or location[0] not in sections:
        return (len(sections), 0)
    model = Settings.model_fields[location[0]].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    keys = list(model.model_fields)
    key = location[1] if len(location) > 1 else ""
    return (sections.index(location[0]), keys.index(key) if key in keys else len(keys))


def _described(
    error: ValidationError, from_env: set[tuple[str, str]], source: str
) -> list[tuple[tuple[str, ...], str]]:
    """One problem per line, with its location, naming where the bad value
    came from: the variable for an environment override, else the key (after
    ``source``); a missing key is named as the variable when the environment
    is the whole config (no ``source``), else as the key and its variable."""
    lines = []
    for item in error.errors():
        location = tuple(str(part) for part in item["loc"])
        if item["type"] == "missing":
            keys = (
                [location[:2]]
                if len(location) > 1
                else [(location[0], key) for key in _section_keys(location[0])]
            )
            for key in keys:
                if source:
                    line = (
                        f"{source}: {'.'.join(key)}: is required but missing "
                        f"(or set {env_var(*key)})"
                    )
                else:
                    line = f"{env_var(*key)}: is required but missing"
                lines.append((key, line))
            continue
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        lines.append((location, _named(location, message, from_env, source)))
    return lines


def _named(
    location: tuple[str, ...], message: str, from_env: set[tuple[str, str]], source: str
) -> str:
    if location[:2] in from_env:
        return f"{env_var(*location[:2])}: {message}"
    line = f"{'.'.join(location)}: {message}" if location else message
    return f"{source}: {line}" if source else line


def _describe(error: ValidationError, from_env: set[tuple[str, str]], source: str) -> list[str]:
    return [line for _, line in _described(error, from_env, source)]


def _missing_roots(merged: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The roots (key, path) that do not exist, when ``server.require_roots``
    asks for them. Checked on the values as given, apart from the model, so
    that they are named whatever else is wrong (a bad port, another root
    that is relative); a ``require_roots`` that is itself invalid counts as
    its default (true)."""
    server = merged.get("server")
    require: Any = server.get("require_roots", True) if isinstance(server, dict) else True
    try:
        require = TypeAdapter(bool).validate_python(require)
    except ValidationError:
        require = True
    roots = merged.get("roots")
    if not require or not isinstance(roots, dict):
        return []
    missing = []
    for key in RootsSettings.model_fields:
        value = roots.get(key)
        if isinstance(value, str | os.PathLike):
            path = os.fspath(value)
            if isinstance(path, str) and os.path.isabs(path) and not os.path.lexists(path):
                missing.append((key, path))
    return missing


def settings_from_mapping(
    data: dict[str, Any], environ: Mapping[str, str] | None = None, source: str = ""
) -> Settings:
    """Validate a config mapping, with the environment's overrides on top.
    ``source`` (such as ``config file '/etc/x.toml'``) starts the errors about
    the mapping's own keys. Every problem is in the one :class:`ConfigError`:
    unknown variables, then bad values, missing keys and roots that do not
    exist, in the order of the settings."""
    merged: dict[str, Any] = {
        section: dict(values) if isinstance(values, dict) else values
        for section, values in data.items()
    }
    overrides = env_overrides(environ or {})
    found: list[tuple[tuple[str, ...], str]] = []
    for section, values in overrides.items():
        if not isinstance(merged.get(section, {}), dict):
            found.append(
                ((section,), f"{source + ': ' if source else ''}{section}: must be a table")
            )
            continue
        merged.setdefault(section, {}).update(values)
    from_env = {(section, key) for section, values in overrides.items() for key in values}
    settings = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as error:
        found += _described(error, from_env, source)
    missing = _missing_roots(merged)
    for index, (key, path) in enumerate(missing):
        hint = (
            " (set server.require_roots = false to start without it)"
            if index == len(missing) - 1
            else ""
        )
        location = ("roots", key)
        found.append(
            (location, _named(location, f"{path!r} does not exist{hint}", from_env, source))
        )
    problems = unknown_env_vars(environ or {})
    problems += [line for _, line in sorted(found, key=lambda item: _order(item[0]))]
    if problems or settings is None:
        raise ConfigError("; ".join(problems))
    return settings


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


def environment_server_settings(environ: Mapping[str, str]) -> ServerSettings:
    """The server keys the environment alone sets (with no config file,
    ``serve`` runs the sample tree with them)."""
    problems = unknown_env_vars(environ)
    overrides = env_overrides(environ).get("server", {})
    try:
        server = _ServerOnly.model_validate({"server": overrides}).server
    except ValidationError as error:
        problems += _describe(error, {("server", key) for key in overrides}, "")
    if problems:
        raise ConfigError("; ".join(problems))
    return server


class _ServerOnly(_Section):
    server: ServerSettings


def resolve_settings(config_path: Path | None, environ: Mapping[str, str]) -> Settings | None:
    """The settings to run with: the file (``--config`` or
    ``EXPORT_SERVICE_CONFIG``) with environment overrides; or, with no file,
    the environment alone when it names a root or the links file; else None
    (then ``serve`` runs the sample tree, other overrides applied). An
    ``EXPORT_SERVICE_CONFIG`` that is set but blank is a :class:`ConfigError`."""
    if config_path is not None:
        return load_settings(config_path, environ)
    from_env = environ.get(CONFIG_ENV_VAR)
    if from_env is not None:
        if not from_env.strip():
            # Set but empty (a compose file's ${VAR} left unset): not taken as
            # "no config", which would run the sample tree instead of the data.
            raise ConfigError(
                f"{CONFIG_ENV_VAR} is set but empty; name the TOML config file, "
                "or unset the variable"
            )
        return load_settings(Path(from_env), environ)
    overrides = env_overrides(environ)
    if "roots" in overrides or "links" in overrides:
        return settings_from_mapping({}, environ)
    return None
