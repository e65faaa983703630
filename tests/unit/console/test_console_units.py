"""The console's pure parts: PKCE, redirect targets, bounded sessions, chart columns, ranges."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from console.errors import BadInput
from console.oidc import pkce_pair, safe_next
from console.series import DAY_MS, HOUR_MS, Range, columns, last_minute_count, pick_range
from console.sessions import BoundedStore
from stack.services.console import frontend_installed

NOW = 1_764_000_000_000


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == digest
    assert pkce_pair()[0] != verifier


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/devices/dev-1", "/devices/dev-1"),
        (None, "/devices"),
        ("https://evil.example/", "/devices"),
        ("//evil.example/x", "/devices"),
        ("/\\evil.example", "/devices"),
        ("devices", "/devices"),
    ],
)
def test_only_local_paths_are_returned_to(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_sessions_are_bounded_and_least_recently_used_go_first() -> None:
    store: BoundedStore[str] = BoundedStore(max_entries=2, idle_s=60)
    a, b = store.put("a"), store.put("b")
    assert store.get(a) == "a"  # a is now the most recent
    c = store.put("c")
    assert store.get(b) is None and store.get(a) == "a" and store.get(c) == "c"
    assert store.pop(a) == "a" and store.get(a) is None
    assert store.get(None) is None and store.get("forged") is None


def test_idle_sessions_expire() -> None:
    store: BoundedStore[str] = BoundedStore(max_entries=10, idle_s=0)
    key = store.put("x")
    assert store.get(key) is None


def test_ranges_pick_1m_windows_up_to_two_days_and_1h_beyond() -> None:
    assert pick_range(Range.HOUR, None, None, NOW) == ("1m", NOW - HOUR_MS, NOW)
    assert pick_range(Range.DAY, None, None, NOW)[0] == "1m"
    window, start, end = pick_range(Range.WEEK, None, None, NOW)
    assert window == "1h" and start % HOUR_MS == 0 and end == NOW
    assert pick_range(Range.CUSTOM, NOW - 3 * DAY_MS, NOW, NOW)[0] == "1h"
    assert pick_range(Range.CUSTOM, NOW - HOUR_MS, NOW, NOW) == ("1m", NOW - HOUR_MS, NOW)


@pytest.mark.parametrize(("start", "end"), [(None, None), (NOW, NOW), (NOW, NOW - 1), (0, NOW)])
def test_bad_custom_ranges_are_refused(start: int | None, end: int | None) -> None:
    with pytest.raises(BadInput):
        pick_range(Range.CUSTOM, start, end, NOW)


def _item(start: str, metric: str, count: int, avg: float = 1.0) -> dict[str, object]:
    return {
        "windowStart": start,
        "metric": metric,
        "count": count,
        "min": avg - 1,
        "max": avg + 1,
        "avg": avg,
    }


def test_columns_per_metric_in_time_order() -> None:
    items = [
        _item("2026-11-24T10:00:00Z", "temperature", 60, 21.0),
        _item("2026-11-24T10:00:00Z", "humidity", 59, 40.0),
        _item("2026-11-24T10:01:00Z", "temperature", 58, 22.0),
    ]
    out = columns(items)
    assert list(out) == ["humidity", "temperature"]
    assert out["temperature"]["t"] == [1795514400.0, 1795514460.0]
    assert out["temperature"]["avg"] == [21.0, 22.0]
    assert out["temperature"]["count"] == [60, 58]
    assert out["humidity"]["min"] == [39.0]


def test_last_minute_count_is_the_newest_windows_largest_count() -> None:
    items = [
        _item("2026-11-24T10:00:00Z", "temperature", 60),
        _item("2026-11-24T10:01:00Z", "temperature", 57),
        _item("2026-11-24T10:01:00Z", "humidity", 58),
    ]
    assert last_minute_count(items) == 58
    assert last_minute_count([]) is None


def test_frontend_counts_as_installed_only_with_its_assets_and_the_current_lockfile(tmp_path: Path) -> None:
    (tmp_path / "package-lock.json").write_text("{}")
    assert not frontend_installed(tmp_path)
    for asset in (
        "uplot/dist/uPlot.iife.min.js",
        "uplot/dist/uPlot.min.css",
        "swagger-ui-dist/swagger-ui-bundle.js",
    ):
        path = tmp_path / "node_modules" / asset
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert not frontend_installed(tmp_path)
    stamp = tmp_path / "node_modules" / ".installed-lock.sha256"
    stamp.write_text(hashlib.sha256(b"{}").hexdigest())
    assert frontend_installed(tmp_path)
    (tmp_path / "package-lock.json").write_text('{"changed": 1}')
    assert not frontend_installed(tmp_path)


def test_the_pipeline_view_hides_the_keycloak_admin_password() -> None:
    from console.ops.service import redact

    detail = "http://localhost:8088/realms/iot (admin console: admin / rwTL-Ww_Vs, in /x/admin-password)"
    assert (
        redact(detail)
        == "http://localhost:8088/realms/iot (admin console: admin / (hidden), in /x/admin-password)"
    )
    assert redact("rss 12 MiB mqtts://localhost:8883") == "rss 12 MiB mqtts://localhost:8883"


def test_prometheus_text_sums_counters_and_keeps_series() -> None:
    from gateway.prometheus_text import parse_prometheus

    text = (
        '# HELP x\nbridge_messages_dlq_total{reason="a"} 2\n'
        'bridge_messages_dlq_total{reason="b"} 3\nup 1\nbad line\n'
    )
    values = parse_prometheus(text)
    assert values["bridge_messages_dlq_total"] == 5 and values['bridge_messages_dlq_total{reason="a"}'] == 2
    assert values["up"] == 1
