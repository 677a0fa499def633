"""The request path's own counters, as a Prometheus scrape reads them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from awstoken.proxy._metrics import RouteMetrics


def scrape(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if line.startswith(("awstoken_proxy_requests_total", "awstoken_proxy_upstream_seconds_"))]


def test_answers_are_counted_by_route_and_status_class() -> None:
    registry = CollectorRegistry()
    metrics = RouteMetrics(registry)
    for route, status in [("ecr", 200), ("ecr", 204), ("ecr", 404), ("npm", 499), ("ecr", 502),
                          ("npm", 101), ("npm", 200)]:
        metrics.count(route, status)
    requests = [line for line in scrape(registry) if line.startswith("awstoken_proxy_requests")]
    assert requests == [
        'awstoken_proxy_requests_total{route="ecr",status="2xx"} 2.0',
        'awstoken_proxy_requests_total{route="ecr",status="4xx"} 1.0',
        'awstoken_proxy_requests_total{route="ecr",status="5xx"} 1.0',
        'awstoken_proxy_requests_total{route="npm",status="1xx"} 1.0',
        'awstoken_proxy_requests_total{route="npm",status="2xx"} 1.0',
        'awstoken_proxy_requests_total{route="npm",status="4xx"} 1.0',
    ]


def test_upstream_latency_is_a_cumulative_histogram_per_route() -> None:
    registry = CollectorRegistry()
    metrics = RouteMetrics(registry)
    for seconds in (0.0005, 0.003, 0.003, 2.0, 100.0):
        metrics.observe("ecr", seconds)
    lines = scrape(registry)
    assert 'awstoken_proxy_upstream_seconds_bucket{le="0.001",route="ecr"} 1.0' in lines
    assert 'awstoken_proxy_upstream_seconds_bucket{le="0.005",route="ecr"} 3.0' in lines
    assert 'awstoken_proxy_upstream_seconds_bucket{le="2.5",route="ecr"} 4.0' in lines
    assert 'awstoken_proxy_upstream_seconds_bucket{le="60.0",route="ecr"} 4.0' in lines
    assert 'awstoken_proxy_upstream_seconds_bucket{le="+Inf",route="ecr"} 5.0' in lines
    assert 'awstoken_proxy_upstream_seconds_count{route="ecr"} 5.0' in lines
    assert 'awstoken_proxy_upstream_seconds_sum{route="ecr"} 102.0065' in lines
