"""Property-based tests (hypothesis) for duration parsing, dot-segment detection and route
prefix matching. Transform and value validation properties are in test_transforms.py."""

from __future__ import annotations

import math
import urllib.parse

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from awstoken._config.load import parse_duration
from awstoken._config.settings import RouteSettings
from awstoken.proxy._routes import RouteTable, has_dot_segment

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@given(st.dictionaries(st.sampled_from(sorted(UNITS)), st.integers(0, 10**6), min_size=1),
       st.randoms(use_true_random=False))
def test_durations_sum_their_parts_in_any_order(parts: dict[str, int], rnd: object) -> None:
    order = sorted(parts)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    text = "".join(f"{parts[unit]}{unit}" for unit in order)
    expected = sum(parts[unit] * UNITS[unit] for unit in parts)
    assert parse_duration(text) == pytest.approx(expected)
    assert parse_duration(f"  {text}  ") == pytest.approx(expected)


@given(st.floats(min_value=0, max_value=1e12), st.sampled_from(sorted(UNITS)))
def test_decimal_amounts(amount: float, unit: str) -> None:
    text = f"{amount:.3f}{unit}"
    assert parse_duration(text) == pytest.approx(float(f"{amount:.3f}") * UNITS[unit])


@given(st.one_of(st.text(), st.binary(), st.integers(), st.floats(), st.booleans(), st.none(),
                 st.lists(st.integers())))
def test_any_input_is_seconds_or_a_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        message = str(exc)
    else:
        message = ""
    # The message describes the value's shape in one line; nothing else is ever raised.
    assert "\n" not in message
    if message:
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert not isinstance(value, bool)


@given(st.sampled_from(sorted(UNITS)), st.integers(0, 99), st.integers(0, 99))
def test_a_unit_given_twice_is_refused(unit: str, a: int, b: int) -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_duration(f"{a}{unit}{b}{unit}")


# -- dot segments ----------------------------------------------------------------------------

SAFE_SEGMENT = st.text(alphabet="abcXYZ019-_~.@:+", min_size=0, max_size=8).filter(
    lambda s: s not in (".", ".."))
DOTS = st.sampled_from([".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2e.", "%2E%2E"])


@given(st.lists(SAFE_SEGMENT, max_size=6))
def test_paths_without_dot_segments_pass(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    assert not has_dot_segment(path)
    assert not has_dot_segment(urllib.parse.quote(path))  # encoded, still no dot segment


@given(st.lists(SAFE_SEGMENT, max_size=5), st.integers(0, 5), DOTS,
       st.sampled_from(["/", "%2f", "%2F", "\\", "%5c"]))
def test_any_dot_segment_is_found_however_encoded(segments: list[str], at: int, dots: str,
                                                  slash: str) -> None:
    at = min(at, len(segments))
    path = "/" + "/".join(segments[:at])
    path = path.rstrip("/") + slash + dots
    if at < len(segments):
        path += slash + "/".join(segments[at:])
    assert has_dot_segment(path), path


# -- route prefixes --------------------------------------------------------------------------

PREFIX = st.text(alphabet="ab/", max_size=6).map(lambda s: "/" + s)
PATH = st.text(alphabet="ab/?", max_size=10).map(lambda s: "/" + s)


def _matches(prefix: str, path: str) -> bool:
    return path.startswith(prefix) and (prefix.endswith("/") or len(path) == len(prefix) or
                                        path[len(prefix)] in "/?")


@given(st.lists(PREFIX, min_size=1, max_size=6, unique=True), PATH)
def test_the_longest_prefix_on_a_segment_boundary_wins(prefixes: list[str], path: str) -> None:
    table = RouteTable([RouteSettings(prefix=p, upstream="http://127.0.0.1:1", token="t")
                        for p in prefixes])
    route = table.match(path)
    candidates = [p for p in prefixes if _matches(p, path)]
    if not candidates:
        assert route is None
        return
    assert route is not None
    assert route.prefix == max(candidates, key=len)
    # A prefix never matches inside a segment: "/ab" is not a route for "/abc".
    assert path == route.prefix or route.prefix.endswith("/") or path[len(route.prefix)] in "/?"


@given(PREFIX, st.text(alphabet="ab", min_size=1, max_size=4))
def test_a_prefix_never_matches_a_longer_segment(prefix: str, tail: str) -> None:
    assume(not prefix.endswith("/"))
    table = RouteTable([RouteSettings(prefix=prefix, upstream="http://127.0.0.1:1", token="t")])
    assert table.match(prefix + tail) is None
    assert table.match(prefix + "/" + tail) is not None


# -- normalized routing ----------------------------------------------------------------------

PIECES = st.sampled_from([
    "a", "s", "ecret", "v2", "npm", "secret", "/", "/", "/", ".", "..", ";", "%2e", "%2E",
    "%2f", "%2F", "%73", "%5c", "\\", "%252e", "%25", "%3b", "%c0%ae", "%c0", "%", "%zz",
    "%00", "%41", "?", "x.y"])
TABLE = RouteTable([
    RouteSettings(prefix="/v2/secret/", upstream="http://127.0.0.1:1/private", token="t"),
    RouteSettings(prefix="/v2/", upstream="http://127.0.0.1:1/public", token="t"),
    RouteSettings(prefix="/npm/", upstream="http://127.0.0.1:1/repo", token="t",
                  strip_prefix=True)])


def _resolve(path: str) -> str:
    """How a lenient upstream reads a path: ';' parameters dropped, '\\' as '/', then
    RFC 3986 dot-segment removal."""
    out: list[str] = []
    for segment in path.replace("\\", "/").split("/")[1:]:
        segment = segment.split(";", 1)[0]
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    return "/" + "/".join(out)


@given(st.sampled_from(["/v2/", "/npm/", "/v2", "/"]), st.lists(PIECES, max_size=10))
def test_routing_agrees_with_every_decoding_and_stays_under_the_base(
        start: str, pieces: list[str]) -> None:
    from awstoken.proxy._routes import PathRefused, decodings, normalize_path

    path = (start + "".join(pieces)).split("?", 1)[0]
    try:
        normal = normalize_path(path)
        route = TABLE.route_for(normal)
    except PathRefused:
        return  # refused with 400: nothing is forwarded
    assert urllib.parse.unquote(normal) == urllib.parse.unquote(path)  # same meaning
    if route is None:
        return
    forwarded = route.upstream_target(normal)
    base = route.upstream_path
    if not route.strip_prefix:
        base += route.prefix.rstrip("/")
    for form in (normal, *decodings(normal)):
        assert TABLE.match(form) is route, (path, form)
    for form in (forwarded, *decodings(forwarded)):
        resolved = _resolve(form)
        assert resolved == base or resolved.startswith(base + "/"), (path, form, resolved)


@given(st.text(alphabet="abcXYZ019-_~@:+/", max_size=20))
def test_plain_paths_are_used_as_sent(tail: str) -> None:
    from awstoken.proxy._routes import normalize_path

    path = "/" + tail
    assert normalize_path(path) is path
