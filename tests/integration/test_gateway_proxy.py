"""The gateway driven by the official openai client against the simulator (separate
processes): chat (plain and streaming), embeddings, models, tools and pass-through fields."""

from __future__ import annotations

import base64
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.procs import Gateway, Simulator, local_config

pytestmark = pytest.mark.integration

KEY_A = "sk-local-a"
JSON = "application/json"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How do I check my account balance?"},
]


def client(gw: Gateway, key: str = KEY_A) -> openai.OpenAI:
    return gw.openai(key)


def direct(sim: Simulator, path: str, body: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = httpx.post(f"{sim.url}/v1/{path}", json=body, timeout=20).json()
    return data


def test_chat_non_streaming_matches_provider(gateway: Gateway, simulator: Simulator) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-thrifty-route"] == "gpt-4o-mini"
    assert raw.headers["x-thrifty-upstream"] == "simulator/gpt-4o-mini"
    expected = direct(
        simulator,
        "chat/completions",
        {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0},
    )
    assert completion.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    cost = float(raw.headers["x-thrifty-cost-usd"])
    price_in, price_out = 0.15, 0.60  # gpt-4o-mini list price per 1M tokens
    assert cost == pytest.approx(
        (completion.usage.prompt_tokens * price_in + completion.usage.completion_tokens * price_out)
        / 1e6
    )


def test_chat_streaming(gateway: Gateway) -> None:
    c = client(gateway)
    plain = c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    # The gateway asks the provider for usage but does not show it to clients that did not ask.
    assert all(ch.usage is None for ch in chunks)
    with_usage = list(
        c.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].usage is not None
    assert plain.usage is not None
    assert with_usage[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_the_providers_request_id_is_passed_on_and_nothing_else_of_its_headers(
    gateway: Gateway,
) -> None:
    """What a provider's support asks for (its request id) reaches the client beside the
    gateway's own; its rate-limit headers (the gateway's account, shared by every tenant) and
    anything else do not."""
    for stream in (False, True):
        raw = client(gateway).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=stream
        )
        upstream_id = raw.headers["x-thrifty-upstream-request-id"]
        assert upstream_id.startswith("req_") and upstream_id != raw.headers["x-request-id"]
        assert int(raw.headers["openai-processing-ms"]) >= 0
        assert not any(h.startswith("x-ratelimit") for h in raw.headers)
        if stream:
            list(raw.parse())


def test_streaming_headers(gateway: Gateway) -> None:
    with client(gateway).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-thrifty-upstream"] == "simulator/gpt-4o-mini"
        body = b"".join(resp.iter_bytes())
    assert body.rstrip().endswith(b"data: [DONE]")
    # The cost, unknown when the headers left, comes as an SSE comment before [DONE].
    comment = [line for line in body.split(b"\n") if line.startswith(b": x-thrifty-cost-usd ")]
    assert len(comment) == 1 and float(comment[0].split()[-1]) > 0


def test_embeddings(gateway: Gateway, simulator: Simulator) -> None:
    result = client(gateway).embeddings.create(
        model="text-embedding-3-small", input=["refund my card", "refund my card please"]
    )
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 1536
    expected = direct(
        simulator,
        "embeddings",
        {
            "model": "text-embedding-3-small",
            "input": ["refund my card"],
            "encoding_format": "base64",
        },
    )
    vec = struct.unpack("<1536f", base64.b64decode(expected["data"][0]["embedding"]))
    assert result.data[0].embedding == pytest.approx(list(vec))
    assert result.usage.prompt_tokens > 0


def test_models_lists_routes(gateway: Gateway) -> None:
    ids = [m.id for m in client(gateway).models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def test_tool_calls_and_unknown_fields_pass_through(gateway: Gateway) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    c = client(gateway)
    completion = c.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Use get_weather for Paris please"}],
        tools=tools,
        extra_body={"x_vendor_field": {"kept": True}},
    )
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls is not None and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert "city" in orjson.loads(calls[0].function.arguments)
    streamed = list(
        c.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Use get_weather for Paris please"}],
            tools=tools,
            stream=True,
        )
    )
    names = [
        tc.function.name
        for ch in streamed
        if ch.choices
        for tc in ch.choices[0].delta.tool_calls or []
        if tc.function is not None
    ]
    assert names == ["get_weather"]
    logprobs = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=2,
        n=2,
        response_format={"type": "json_object"},
    )
    assert len(logprobs.choices) == 2
    assert logprobs.choices[0].logprobs is not None
    assert logprobs.choices[0].logprobs.content
    assert len(logprobs.choices[0].logprobs.content[0].top_logprobs) == 2
    assert "answer" in orjson.loads(logprobs.choices[0].message.content or "{}")


def test_a_deferral_this_gateway_cannot_make_says_so(gateway: Gateway) -> None:
    """examples/local.yaml has no batch queue: a request asking to be deferred is answered at
    once (full price), and the answer says the deferral was refused."""
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-thrifty-defer": "true"}
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-thrifty-deferred"] == "refused"
    plain = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    assert "x-thrifty-deferred" not in plain.headers


def test_unknown_model_is_404_in_openai_shape(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway).chat.completions.create(model="no-such-model", messages=MESSAGES)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"


def test_wrongly_typed_chat_fields_are_a_400_in_openai_shape(
    gateway_factory: GatewayFactory,
) -> None:
    """Valid JSON with a field of the wrong type is the client's 400 naming the field, never a
    500 from a stage that iterated it (this gateway caches, so the cache stage runs too)."""
    gw = gateway_factory(cache=True)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": 5}, "messages"),
        ({"messages": True}, "messages"),
        ({"messages": ["hello"]}, "messages"),
        ({}, "messages"),
        ({"messages": MESSAGES, "stream": True, "stream_options": "x"}, "stream_options"),
        ({"messages": MESSAGES, "stream": True, "stream_options": [1]}, "stream_options"),
        ({"messages": MESSAGES, "n": "two"}, "n"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": MESSAGES, "response_format": "json_object"}, "response_format"),
    ]
    for fields, param in cases:
        resp = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", **fields},
            headers={"authorization": f"Bearer {KEY_A}"},
            timeout=20,
        )
        assert resp.status_code == 400, (fields, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param


def test_bad_input_is_the_clients_400_and_the_connection_stays_usable(
    gateway_factory: GatewayFactory,
) -> None:
    """Each was a 500 (and, after a 500, uvicorn reset the keep-alive connection): nesting
    deeper than orjson writes back, wrongly typed tools or roles, a `since` a datetime cannot
    hold. Every answer is a 400 in OpenAI's shape naming the field, on one connection."""
    gw = gateway_factory(cache=True)
    auth = {"authorization": f"Bearer {KEY_A}"}
    admin = {"authorization": "Bearer sk-local-admin"}
    deep = '{"model": "gpt-4o-mini", "messages": [], "x": ' + "[" * 300 + "]" * 300 + "}"
    with httpx.Client(base_url=gw.url, timeout=20) as http:
        chats: list[tuple[Any, str | None]] = [
            (deep, None),
            ({"messages": MESSAGES, "tools": 5}, "tools"),
            ({"messages": [{"role": 5, "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user", "content": {"x": "y"}}]}, "messages[0].content"),
            # checked by the provider, passed on with its param
            ({"messages": MESSAGES, "temperature": 5}, "temperature"),
            ({"messages": MESSAGES, "n": 10**30}, "n"),
        ]
        for body, param in chats:
            if isinstance(body, dict):
                resp = http.post(
                    "/v1/chat/completions", json={"model": "gpt-4o-mini", **body}, headers=auth
                )
            else:
                resp = http.post("/v1/chat/completions", content=body, headers=auth)
            assert resp.status_code == 400, (param, resp.text)
            error = resp.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param
        for since in ("nan", "inf", "1e300", "9999-12-31T23:59:59-14:00"):
            resp = http.get("/v1/thrifty/usage", params={"since": since}, headers=auth)
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "since"
        # A bad defer header is refused before any stage runs: on a cache hit too, and on a
        # gateway with no batch queue.
        asked = {"model": "gpt-4o-mini", "messages": MESSAGES}
        assert http.post("/v1/chat/completions", json=asked, headers=auth).status_code == 200
        for _ in range(50):
            hit = http.post("/v1/chat/completions", json=asked, headers=auth)
            if hit.headers["x-thrifty-cache"] == "exact":
                break
            time.sleep(0.05)
        assert hit.headers["x-thrifty-cache"] == "exact"
        resp = http.post(
            "/v1/chat/completions", json=asked, headers={**auth, "x-thrifty-defer": "maybe"}
        )
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "x-thrifty-defer"
        purge = "/v1/thrifty/cache/purge"
        resp = http.post(purge, content=b"{", headers={**admin, "content-type": JSON})
        assert resp.status_code == 400
        assert resp.json()["error"]["message"] == "The request body is not valid JSON."
        resp = http.post(purge, content=b"{", headers=admin)  # no content type
        assert resp.status_code == 400 and "application/json" in resp.json()["error"]["message"]
        resp = http.post(purge, json={"tenant": 5}, headers=admin)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "tenant"
        resp = http.post(purge, json=[], headers=admin)
        assert resp.json()["error"]["message"] == "The request body must be a JSON object."
        ok = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers=auth,
        )
        assert ok.status_code == 200
    assert "Traceback" not in gw.log() and "internal_error" not in gw.log()


def test_an_unexpected_error_is_a_500_in_openai_shape_that_goes_no_further() -> None:
    """Starlette's handler for `Exception` answers and then re-raises (uvicorn then resets the
    connection, and a test client raises): the gateway's answer ends it there."""
    from fastapi.testclient import TestClient

    from thrifty_core.config import parse_config
    from thrifty_gateway.app import create_app

    app = create_app(parse_config(local_config("http://127.0.0.1:9/v1")))

    async def broken() -> None:
        raise RuntimeError("a prompt could be quoted here")

    app.add_api_route("/broken", broken)
    with TestClient(app) as http:  # raises what escapes the app
        resp = http.get("/broken")
        assert resp.status_code == 500
        assert resp.json()["error"]["code"] == "internal_error"
        assert "prompt" not in resp.text
        assert http.get("/healthz").status_code == 200


def test_a_stream_the_client_leaves_is_charged_for_the_text_it_was_sent(
    tmp_path: Path,
) -> None:
    """The client closes the stream before the usage chunk: the provider still produced (and
    bills) what was sent, so the ledger estimates completion tokens from the relayed text,
    on a gateway with no stage too."""
    from tests.integration.procs import start_gateway, start_simulator

    slow = start_simulator(tmp_path / "sim", "--chunk-delay-ms", "20")
    gw = start_gateway(tmp_path / "gw", local_config(slow.url))
    try:
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "max_tokens": 200}
        with (
            httpx.Client(timeout=20) as http,
            http.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {KEY_A}"},
            ) as resp,
        ):
            assert resp.status_code == 200
            events = 0
            for line in resp.iter_lines():
                events += line.startswith("data: ")
                if events >= 8:
                    break  # leave mid-stream
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            totals = httpx.get(
                f"{gw.url}/v1/thrifty/usage", headers={"authorization": "Bearer sk-local-admin"}
            ).json()["totals"]
            if totals["requests"]:
                break
            time.sleep(0.1)
        assert totals["requests"] == 1
        assert totals["completion_tokens"] > 0 and totals["cost_usd"] > 0
    finally:
        gw.stop()
        slow.stop()
