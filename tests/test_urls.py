"""File-system names as URL path segments, and URL paths back to names."""

from __future__ import annotations

import pytest

from export_service.core.urls import content_disposition, url_path_segments, url_segment
from export_service.errors import NotFound


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


def test_content_disposition_names_the_file_exactly_and_safely() -> None:
    """RFC 6266: ``filename*`` holds the exact name whenever ``filename``
    cannot; quotes, backslashes and control characters never reach the
    quoted string (a newline would end the header)."""
    assert (
        content_disposition("attachment", "export_r.zip") == 'attachment; filename="export_r.zip"'
    )
    assert content_disposition("attachment", "caf\u00e9 \u2013 lead.wav") == (
        'attachment; filename="caf_ _ lead.wav"; '
        "filename*=UTF-8''caf%C3%A9%20%E2%80%93%20lead.wav"
    )
    # File URLs keep the name's letters in filename too: curl -OJ and wget
    # read nothing else.
    assert content_disposition("inline", "caf\u00e9 \u2013 lead.wav", ascii_only=False) == (
        'inline; filename="caf\u00e9 \u2013 lead.wav"; '
        "filename*=UTF-8''caf%C3%A9%20%E2%80%93%20lead.wav"
    )
    for ascii_only in (True, False):
        assert content_disposition("inline", 'a"b\\c\n\u202e.wav', ascii_only=ascii_only) == (
            "inline; filename=\"a_b_c__.wav\"; filename*=UTF-8''a%22b%5Cc%0A%E2%80%AE.wav"
        )
        # Not UTF-8 on disk: no filename* can say it.
        assert content_disposition("inline", "raw\udcff.wav", ascii_only=ascii_only) == (
            'inline; filename="raw_.wav"'
        )
