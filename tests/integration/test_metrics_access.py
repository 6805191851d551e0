"""Where metrics listen and who may read them: METRICS_HOST (else HOST), METRICS_TOKEN."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import httpx

from infra.metrics import start_metrics_server
from infra.runtime.settings import Settings
from tests.servers import running_api, settings_for


def test_worker_metrics_listen_on_host_unless_metrics_host_says_otherwise() -> None:
    assert Settings.from_env({"HOST": "127.0.0.1"}).metrics_listen_host == "127.0.0.1"
    assert Settings.from_env({"HOST": "0.0.0.0"}).metrics_listen_host == "0.0.0.0"
    both = Settings.from_env({"HOST": "0.0.0.0", "METRICS_HOST": "127.0.0.2"})
    assert both.metrics_listen_host == "127.0.0.2"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_the_worker_metrics_server_binds_its_host_and_asks_for_the_token() -> None:
    port = _port()
    server = start_metrics_server("127.0.0.1", port, token="scrape-me")
    try:
        assert server.server_address[0] == "127.0.0.1"
        with socket.socket() as probe:  # not on another local address
            assert probe.connect_ex(("127.0.0.2", port)) != 0
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 401
        assert _get(f"http://127.0.0.1:{port}/metrics", "wrong")[0] == 401
        status, text = _get(f"http://127.0.0.1:{port}/metrics", "scrape-me")
        assert status == 200
        assert "cardinal_ballots_accepted_total" in text
    finally:
        server.shutdown()
        server.server_close()


async def test_the_api_metrics_ask_for_the_token_where_one_is_set(database_url: str) -> None:
    settings = settings_for(database_url, metrics_token="scrape-me")
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert allowed.status_code == 200
        assert "cardinal_log_head_position" in allowed.text
