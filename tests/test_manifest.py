from export_service.exports import ExportSources, build_export
from tests.conftest import AirTree, write


def test_taking_the_files_gives_them_in_order_and_drops_them(tree: AirTree) -> None:
    """What a ZIP plan uses: the same entries as ``files``, and the scan's
    records released as they are handed over."""
    for index in range(5000):  # more than one slice
        write(tree.render / "r" / f"{index % 7}" / f"{index:04d}.wav")
    write(tree.midi / "20261101_r" / "track.mid", b"m")
    sources = ExportSources.from_settings(tree.settings())
    expected = list(build_export(sources, "r", None).files)
    export = build_export(sources, "r", None)
    assert list(export.take_files()) == expected
    assert len(expected) == 5001
    assert len(export) == 0
