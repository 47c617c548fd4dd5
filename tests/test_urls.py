"""File-system names as URL path segments, and URL paths back to names."""

from __future__ import annotations

import pytest

from export_service.errors import NotFound
from export_service.urls import url_path_segments, url_segment


def test_url_segments_are_encoded_from_their_bytes() -> None:
    assert url_segment("mix-1_a.b~c.wav") == "mix-1_a.b~c.wav"
    assert url_segment("a b/#?%.wav") == "a%20b%2F%23%3F%25.wav"
    assert url_segment("ü") == "%C3%BC"
    assert url_segment("raw\udcff.wav") == "raw%FF.wav"  # not UTF-8 on disk


def test_url_segments_are_decoded_once_from_bytes() -> None:
    assert url_path_segments("r/a%20b/%C3%BC.wav") == ["r", "a b", "ü.wav"]
    assert url_path_segments("r/%FF.wav") == ["r", "\udcff.wav"]
    assert url_path_segments("r/%252e%252e") == ["r", "%2e%2e"]
    for bad in ["", "r/", "r//x", "r/.", "r/..", "r/%2e%2e", "r/a%2fb", "r/a%00"]:
        with pytest.raises(NotFound):
            url_path_segments(bad)


def test_an_encoded_name_decodes_to_itself() -> None:
    names = ["a b", "ü.wav", "raw\udcff.wav", "%2e%2e", "new\nline"]
    assert url_path_segments("/".join(map(url_segment, names))) == names
