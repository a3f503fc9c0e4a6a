"""Request metrics in the Prometheus text format, and the ASGI middleware that records them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .problems import CLIENT_CLOSED

#: Scope key where a middleware that answers before routing names the route template it guards.
ROUTE_LABEL = "imseg.route"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counters and latency histograms rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> [bucket counts..., sum, count]

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.setdefault(route, [0.0] * (len(_BUCKETS) + 2))
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[-2] += seconds
        hist[-1] += 1

    def _request_lines(self) -> list[str]:
        lines = ["# HELP imseg_http_requests_total HTTP requests by method, route and status.",
                 "# TYPE imseg_http_requests_total counter"]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(f'imseg_http_requests_total{{method="{_esc(method)}",route="{_esc(route)}",status="{status}"}} '
                         f"{count}")
        lines += ["# HELP imseg_http_request_duration_seconds Request latency by route.",
                  "# TYPE imseg_http_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            r = _esc(route)
            for i, bound in enumerate(_BUCKETS):
                lines.append(f'imseg_http_request_duration_seconds_bucket{{route="{r}",le="{bound}"}} {int(hist[i])}')
            lines.append(f'imseg_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {int(hist[-1])}')
            lines.append(f'imseg_http_request_duration_seconds_sum{{route="{r}"}} {hist[-2]:.6f}')
            lines.append(f'imseg_http_request_duration_seconds_count{{route="{r}"}} {int(hist[-1])}')
        return lines

    def render(self, cache: Any, pool: Any, uploads: Any) -> str:
        """The text exposition: requests and latencies, then the cache, model queue and upload figures."""
        lines = self._request_lines()
        for name, kind, value, help_text in [
            ("imseg_cache_hits_total", "counter", cache.hits, "Embedding cache hits."),
            ("imseg_cache_misses_total", "counter", cache.misses, "Embedding cache misses."),
            ("imseg_cache_evictions_total", "counter", cache.evictions, "Embedding cache evictions."),
            ("imseg_cache_items", "gauge", len(cache), "Embeddings in the cache."),
            ("imseg_cache_bytes", "gauge", cache.bytes, "Bytes held by the embedding cache."),
            ("imseg_model_queue_waiting", "gauge", pool.waiting, "Requests waiting for a model worker."),
            ("imseg_model_running", "gauge", pool.running, "Model calls running."),
            ("imseg_model_rejected_total", "counter", pool.rejected, "Requests refused with 503 (busy)."),
            ("imseg_model_timeouts_total", "counter", pool.timeouts, "Model calls that timed out (504)."),
            ("imseg_upload_bytes_reserved", "gauge", uploads.held, "Upload body bytes reserved by requests in flight."),
            ("imseg_upload_rejected_total", "counter", uploads.rejected,
             "Uploads refused with 503 (upload memory limit)."),
        ]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


class ObserveMiddleware:
    """ASGI middleware: counts every request by method, route template and status, with its latency.

    The status is the one the app sent; a request whose client disconnected before an answer
    started counts as 499; an exception escaping the app counts as 500. A request answered before
    routing is labelled with the route template an inner middleware put in ``scope[ROUTE_LABEL]``.
    """

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    @staticmethod
    def _route(scope: dict) -> str:
        route = scope.get("route")
        return getattr(route, "path", None) or scope.get(ROUTE_LABEL) or "unmatched"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None
        disconnected = False

        async def watch_receive() -> dict:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def watch_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        except BaseException:
            status = status or 500
            raise
        finally:
            if status is None:
                status = CLIENT_CLOSED if disconnected else 500
            self.metrics.observe(scope.get("method", ""), self._route(scope), status, time.perf_counter() - start)
