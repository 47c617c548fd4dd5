"""Settings: the TOML file, the environment overlay, their one-line errors, and
the defaults that follow the machine (the CPU count follows the container's CPU
quota, read from fake cgroup files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export_service.config import (
    environment_server_settings,
    load_settings,
    resolve_settings,
    settings_from_mapping,
    unknown_env_vars,
)
from export_service.core.cpus import cgroup_cpu_quota, usable_cpus
from export_service.errors import ConfigError
from tests.helpers import AirTree


def _toml(tree: AirTree, **overrides: str) -> str:
    values = {
        "render": str(tree.render),
        "midi_generation": str(tree.midi),
        "param_generation": str(tree.param),
        "links": str(tree.links),
        "extra": "",
    } | overrides
    return f"""
[server]
host = "127.0.0.1"
port = 9000
{values["extra"]}
[roots]
render = "{values["render"]}"
midi_generation = "{values["midi_generation"]}"
param_generation = "{values["param_generation"]}"

[links]
file = "{values["links"]}"
"""


def test_contract_keys_load_into_frozen_settings(tree: AirTree, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_toml(tree))
    settings = load_settings(path)
    assert settings.server.port == 9000
    assert settings.roots.render == tree.render
    assert settings.links.file == tree.links
    assert settings.urls.render == "/api/audio"
    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1


def test_example_config_documents_only_valid_keys(tree: AirTree, tmp_path: Path) -> None:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    for key, path in [
        ("/data/air/render/output", tree.render),
        ("/data/air/midi_generation/output", tree.midi),
        ("/data/air/param_generation/output", tree.param),
    ]:
        example = example.replace(key, str(path))
    config = tmp_path / "example.toml"
    config.write_text(example)
    assert load_settings(config).urls.midi_generation == "/api/midi-generation/output"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"extra": "hots = 'x'"}, "server.hots: unknown key"),
        ({"extra": "port = 'eighty'"}, "server.port"),
        ({"render": "relative/render"}, "roots.render: must be an absolute path"),
        (
            {"midi_generation": "/nonexistent/midi"},
            "roots.midi_generation: '/nonexistent/midi' does not exist",
        ),
        ({"links": "step_links.json"}, "links.file: must be an absolute path"),
    ],
)
def test_invalid_values_name_their_key(
    tree: AirTree, tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_toml(tree, **overrides).replace("port = 9000\nport", "port"))
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_settings(path)


def test_missing_section_and_bad_toml(tree: AirTree, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 1\n")
    with pytest.raises(ConfigError) as missing:
        load_settings(path)
    assert str(missing.value) == "; ".join(
        f"config file {str(path)!r}: {key}: is required but missing (or set {variable})"
        for key, variable in [
            ("roots.render", "EXPORT_SERVICE_ROOTS_RENDER"),
            ("roots.midi_generation", "EXPORT_SERVICE_ROOTS_MIDI_GENERATION"),
            ("roots.param_generation", "EXPORT_SERVICE_ROOTS_PARAM_GENERATION"),
            ("links.file", "EXPORT_SERVICE_LINKS_FILE"),
        ]
    )
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_the_container_config_is_valid() -> None:
    import tomllib

    from export_service.config import settings_from_mapping

    path = Path(__file__).parent.parent / "deploy" / "config.toml"
    settings = settings_from_mapping(tomllib.loads(path.read_text()))
    assert settings.server.require_roots is False  # the backend may create its folders later
    assert str(settings.links.file) == "/data/air/projects/output/step_links.json"


def test_the_example_documents_every_key() -> None:
    import tomllib

    from export_service.config import Settings

    example = tomllib.loads((Path(__file__).parent.parent / "config.example.toml").read_text())
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert set(example[section]) == set(model.model_fields), section


def test_zip_threads_default_to_the_cpus_the_process_may_use(tree: AirTree) -> None:
    assert tree.settings().limits.zip_thread_count == len(os.sched_getaffinity(0))
    assert tree.settings(limits={"zip_threads": 3}).limits.zip_thread_count == 3


def _env(tree: AirTree, **extra: str) -> dict[str, str]:
    return {
        "EXPORT_SERVICE_ROOTS_RENDER": str(tree.render),
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION": str(tree.midi),
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": str(tree.param),
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
        **extra,
    }


def test_a_typo_in_a_variable_is_named_with_the_nearest_key(tree: AirTree, tmp_path: Path) -> None:
    """It passed silently: the port stayed 8080."""
    environ = _env(tree, EXPORT_SERVICE_SERVER_PROT="9000")
    message = (
        "EXPORT_SERVICE_SERVER_PROT: unknown variable (did you mean EXPORT_SERVICE_SERVER_PORT?)"
    )
    with pytest.raises(ConfigError) as env_only:
        resolve_settings(None, environ)
    assert str(env_only.value) == message
    path = tmp_path / "config.toml"
    path.write_text(_toml(tree))
    with pytest.raises(ConfigError) as with_file:
        load_settings(path, environ)
    assert str(with_file.value) == message
    with pytest.raises(ConfigError) as server_only:  # healthcheck, serve with no config
        environment_server_settings({"EXPORT_SERVICE_SERVER_PROT": "9000"})
    assert str(server_only.value) == message


def test_the_services_other_variables_are_no_typo(tree: AirTree) -> None:
    """The config file's path, and the backend's address of the service
    (fastapi_proxy), which one shell may hand both programs."""
    environ = _env(tree, EXPORT_SERVICE_URL="http://127.0.0.1:8080")
    settings = resolve_settings(None, environ)
    assert settings is not None and settings.roots.render == tree.render
    assert unknown_env_vars({"EXPORT_SERVICE_CONFIG": "/etc/x.toml", **environ}) == []


@pytest.mark.parametrize("value", ["", " "])
def test_a_config_variable_set_but_empty_is_refused(tree: AirTree, value: str) -> None:
    """It counted as unset: serve ran the sample tree instead of the data."""
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, _env(tree, EXPORT_SERVICE_CONFIG=value))
    assert str(error.value) == (
        "EXPORT_SERVICE_CONFIG is set but empty; name the TOML config file, or unset the variable"
    )


def test_an_env_only_config_names_the_variables_it_lacks(tree: AirTree) -> None:
    environ = _env(tree)
    del environ["EXPORT_SERVICE_LINKS_FILE"], environ["EXPORT_SERVICE_ROOTS_MIDI_GENERATION"]
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, environ)
    assert str(error.value) == (
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION: is required but missing; "
        "EXPORT_SERVICE_LINKS_FILE: is required but missing"
    )


def test_every_problem_is_in_one_message(tree: AirTree) -> None:
    """All missing roots at once (only the first was named), with the other
    bad values and the typos."""
    environ = {
        "EXPORT_SERVICE_ROOTS_RENDER": "/nonexistent/render",
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION": "/nonexistent/midi",
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": str(tree.param),
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
        "EXPORT_SERVICE_LIMITS_IO_THREADS": "0",
        "EXPORT_SERVICE_LOGING_LEVEL": "INFO",
    }
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, environ)
    assert str(error.value).split("; ") == [
        "EXPORT_SERVICE_LOGING_LEVEL: unknown variable "
        "(did you mean EXPORT_SERVICE_LOGGING_LEVEL?)",
        "EXPORT_SERVICE_ROOTS_RENDER: '/nonexistent/render' does not exist",
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION: '/nonexistent/midi' does not exist "
        "(set server.require_roots = false to start without it)",
        "EXPORT_SERVICE_LIMITS_IO_THREADS: Input should be greater than or equal to 1",
    ]


@pytest.mark.parametrize("level", ["debug", "Warning", "ERROR"])
def test_level_names_in_any_case(tree: AirTree, level: str) -> None:
    settings = settings_from_mapping({}, _env(tree, EXPORT_SERVICE_LOGGING_LEVEL=level))
    assert settings.logging.level == level.upper()


def test_missing_roots_are_named_beside_any_other_bad_value(tree: AirTree) -> None:
    """A bad port (the server section invalid) or a relative root used to
    hide every root that does not exist."""
    environ = {
        "EXPORT_SERVICE_ROOTS_RENDER": "/nonexistent/1",
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION": "/nonexistent/2",
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": "/nonexistent/3",
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
        "EXPORT_SERVICE_SERVER_PORT": "abc",
    }
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, environ)
    assert str(error.value).split("; ") == [
        "EXPORT_SERVICE_SERVER_PORT: Input should be a valid integer, "
        "unable to parse string as an integer",
        "EXPORT_SERVICE_ROOTS_RENDER: '/nonexistent/1' does not exist",
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION: '/nonexistent/2' does not exist",
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION: '/nonexistent/3' does not exist "
        "(set server.require_roots = false to start without it)",
    ]
    environ |= {
        "EXPORT_SERVICE_SERVER_PORT": "1",
        "EXPORT_SERVICE_ROOTS_RENDER": "relative",
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": str(tree.param),
    }
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, environ)
    assert str(error.value).split("; ") == [
        "EXPORT_SERVICE_ROOTS_RENDER: must be an absolute path, got 'relative'",
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION: '/nonexistent/2' does not exist "
        "(set server.require_roots = false to start without it)",
    ]
    environ["EXPORT_SERVICE_SERVER_REQUIRE_ROOTS"] = "false"
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, environ)
    assert str(error.value) == (
        "EXPORT_SERVICE_ROOTS_RENDER: must be an absolute path, got 'relative'"
    )


def test_a_file_and_the_environment_in_one_message(tree: AirTree, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nport = "x"\n[roots]\nrender = "/nonexistent/1"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(path, {"EXPORT_SERVICE_ROOTS_MIDI_GENERATION": "/nonexistent/2"})
    source = f"config file {str(path)!r}"
    assert str(error.value).split("; ") == [
        f"{source}: server.port: Input should be a valid integer, "
        "unable to parse string as an integer",
        f"{source}: roots.render: '/nonexistent/1' does not exist",
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION: '/nonexistent/2' does not exist "
        "(set server.require_roots = false to start without it)",
        f"{source}: roots.param_generation: is required but missing "
        "(or set EXPORT_SERVICE_ROOTS_PARAM_GENERATION)",
        f"{source}: links.file: is required but missing (or set EXPORT_SERVICE_LINKS_FILE)",
    ]


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("EXPORT_SERVICE_server_port", "variable names are upper case: EXPORT_SERVICE_SERVER_PORT"),
        ("export_service_server_port", "variable names are upper case: EXPORT_SERVICE_SERVER_PORT"),
        ("EXPORT_SERVICE_Server_Prot", "did you mean EXPORT_SERVICE_SERVER_PORT?"),
    ],
)
def test_a_variable_in_another_case_is_refused_naming_its_key(
    tree: AirTree, name: str, hint: str
) -> None:
    """Variables are read as spelled in upper case; another case is refused
    (it would change nothing), naming the key it meant, not the nearest
    upper-case string (EXPORT_SERVICE_URL)."""
    with pytest.raises(ConfigError) as error:
        resolve_settings(None, _env(tree, **{name: "1"}))
    assert str(error.value) == f"{name}: unknown variable ({hint})"


def test_cors_origins_from_the_file_and_the_environment(tree: AirTree, tmp_path: Path) -> None:
    """Taken in any case, kept as browsers send them (lower case), once each."""
    path = tmp_path / "config.toml"
    extra = '[cors]\nallowed_origins = ["https://AIR.example.com", "https://air.example.com"]\n'
    path.write_text(_toml(tree) + extra)
    assert load_settings(path).cors.allowed_origins == ("https://air.example.com",)
    assert load_settings(path).cors.max_age_seconds == 600
    environ = {"EXPORT_SERVICE_CORS_ALLOWED_ORIGINS": "http://localhost:5173, http://[::1]:8080"}
    assert load_settings(path, environ).cors.allowed_origins == (
        "http://localhost:5173",
        "http://[::1]:8080",
    )
    assert load_settings(
        path, {"EXPORT_SERVICE_CORS_ALLOWED_ORIGINS": "*"}
    ).cors.allowed_origins == ("*",)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("https://air.example.com/", "no trailing '/'"),
        ("https://air.example.com/app", "no path"),
        ("air.example.com", "scheme://host[:port]"),
        ("null", "scheme://host[:port]"),
        ("ftp://air.example.com", "scheme://host[:port]"),
        ("https://air.example.com:443", "without its default port :443"),
        ("http://air.example.com:0", "the port must be 1 to 65535"),
        ("*,https://air.example.com", "'*' allows every origin and must then be the only item"),
    ],
)
def test_a_bad_cors_origin_is_named(tree: AirTree, value: str, said: str) -> None:
    with pytest.raises(ConfigError) as error:
        tree_settings = {"EXPORT_SERVICE_CORS_ALLOWED_ORIGINS": value}
        settings_from_mapping(
            {
                "roots": {
                    "render": str(tree.render),
                    "midi_generation": str(tree.midi),
                    "param_generation": str(tree.param),
                },
                "links": {"file": str(tree.links)},
            },
            tree_settings,
        )
    assert str(error.value).startswith("EXPORT_SERVICE_CORS_ALLOWED_ORIGINS: ")
    assert said in str(error.value)


AFFINITY = len(os.sched_getaffinity(0))


def _file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "proc_self_cgroup", tmp_path / "sys_fs_cgroup"


def test_v2_cpu_max_in_a_container(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "0::/\n")
    _file(mount / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(proc, mount) == 1.5
    assert usable_cpus(proc, mount) == min(AFFINITY, 2)


def test_v2_the_smallest_limit_on_the_way_to_the_root_wins(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "0::/kubepods/pod1/c1\n")
    _file(mount / "kubepods" / "pod1" / "c1" / "cpu.max", "max 100000\n")
    _file(mount / "kubepods" / "pod1" / "cpu.max", "50000 100000\n")
    _file(mount / "kubepods" / "cpu.max", "800000 100000\n")
    assert cgroup_cpu_quota(proc, mount) == 0.5
    assert usable_cpus(proc, mount) == 1


def test_v2_unlimited_is_the_affinity(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "0::/\n")
    _file(mount / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(proc, mount) is None
    assert usable_cpus(proc, mount) == AFFINITY


def test_v1_cfs_quota(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    # The host's path is absent inside the container: its mount root is its cgroup.
    _file(mount / "cpu,cpuacct" / "cpu.cfs_quota_us", "100000\n")
    _file(mount / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc, mount) == 1.0
    assert usable_cpus(proc, mount) == 1


def test_v1_unlimited_quota_is_minus_one(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "1:cpu:/\n")
    _file(mount / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _file(mount / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc, mount) is None
    assert usable_cpus(proc, mount) == AFFINITY


@pytest.mark.parametrize("cpu_max", ["", "garbage", "100000 0", "-5 100000"])
def test_unreadable_or_odd_files_mean_no_quota(fake: tuple[Path, Path], cpu_max: str) -> None:
    proc, mount = fake
    _file(proc, "0::/\n")
    _file(mount / "cpu.max", cpu_max)
    assert cgroup_cpu_quota(proc, mount) is None


def test_no_cgroup_files_at_all(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    assert cgroup_cpu_quota(proc, mount) is None
    assert usable_cpus(proc, mount) == AFFINITY
