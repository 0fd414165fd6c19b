"""Parsing of the LL-HLS delivery directives: the spec's forms in, anything else out."""

from __future__ import annotations

import pytest

from appliance.package import hls_request


def test_parse_directives_accepts_the_spec_forms() -> None:
    parse = hls_request.parse_directives
    assert parse([]) == hls_request.Directives()
    assert parse([("_HLS_msn", "12"), ("_HLS_part", "3")]) == hls_request.Directives(12, 3)
    assert parse([("_HLS_skip", "YES")]).skip == "YES"
    skip_v2 = parse([("_HLS_skip", "v2"), ("_HLS_msn", "007")])
    assert skip_v2 == hls_request.Directives(7, None, "v2")
    # other parameters (a playback token) are not ours to judge
    assert parse([("token", "abc"), ("_HLS_msn", "1")]).msn == 1


BAD_QUERIES: list[list[tuple[str, str]]] = [
    [("_HLS_msn", v)] for v in ("", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "abc",
                                "١٢", "1_000", "9" * 16, "NaN", "inf", "12a", "1,2", "∞")
] + [
    [("_HLS_msn", "1"), ("_HLS_part", v)] for v in ("", "-1", "0.5", "x", "1" * 10, "²")
] + [
    [("_HLS_part", "1")],
    [("_HLS_msn", "1"), ("_HLS_msn", "2")],
    [("_HLS_skip", "YES"), ("_HLS_skip", "YES")],
] + [[("_HLS_skip", v)] for v in ("", "yes", "NO", "v3", "V2", "YES ", "true", "1")]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_parse_directives_refuses_garbage(query: list[tuple[str, str]]) -> None:
    with pytest.raises(hls_request.HlsRequestError):
        hls_request.parse_directives(query)
