import os
from pathlib import Path

import pytest

from export_service.config import load_settings
from export_service.errors import ConfigError
from tests.conftest import AirTree


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
    with pytest.raises(ConfigError, match="roots: is required but missing"):
        load_settings(path)
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
