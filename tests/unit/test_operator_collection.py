"""The collection Job's steps against a stand-in of the few Qdrant REST routes it calls (no
Qdrant server package can be installed in CI; the routes and bodies follow Qdrant's OpenAPI, and
the Job's requests were checked once by hand against a Qdrant 1.18.3 server built from source,
bench/RESULTS.md: GET /, GET, PUT, DELETE and PATCH /collections/{name}, PUT
/collections/{name}/index, POST /collections/{name}/points/count and /points/delete with a
`match` filter)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from thrifty_operator.collection import CollectionMismatch, delete_collection, ensure_collection


class FakeQdrant:
    def __init__(self) -> None:
        self.collections: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.keys: list[str | None] = []
        self.points: dict[str, list[dict[str, Any]]] = {}  # collection -> payloads
        # collection -> its hnsw_config (Qdrant's defaults unless set)
        self.hnsw: dict[str, dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []
        self.version = "1.18.3"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self.root)
        app.router.add_get("/collections/{name}", self.get)
        app.router.add_put("/collections/{name}", self.put)
        app.router.add_delete("/collections/{name}", self.delete)
        app.router.add_patch("/collections/{name}", self.patch)
        app.router.add_put("/collections/{name}/index", self.index)
        app.router.add_post("/collections/{name}/points/count", self._count)
        app.router.add_post("/collections/{name}/points/delete", self.delete_points)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.keys.append(request.headers.get("api-key"))
        response: web.StreamResponse = await handler(request)
        return response

    async def root(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"title": "qdrant - vector search engine", "version": self.version}
        )

    async def get(self, request: web.Request) -> web.Response:
        found = self.collections.get(request.match_info["name"])
        if found is None:
            return web.json_response({"status": {"error": "Not found"}}, status=404)
        name = request.match_info["name"]
        hnsw = {
            "m": 16,
            "ef_construct": 100,
            "full_scan_threshold": 10000,
            **self.hnsw.get(name, {}),
        }
        result = {
            "config": {
                "params": {"vectors": {"size": found["size"], "distance": "Cosine"}},
                "hnsw_config": hnsw,
            },
            "payload_schema": {f: {"data_type": "keyword"} for f in found["schema"]},
        }
        return web.json_response({"result": result, "status": "ok"})

    async def put(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in self.collections:
            return web.json_response({"status": {"error": "already exists"}}, status=409)
        body = await request.json()
        self.collections[name] = {"size": body["vectors"]["size"], "schema": set()}
        self.hnsw[name] = dict(body.get("hnsw_config") or {})
        return web.json_response({"result": True, "status": "ok"})

    async def patch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.collections:
            return web.json_response({"status": {"error": "Not found"}}, status=404)
        body = await request.json()
        self.patches.append(body)
        self.hnsw.setdefault(name, {}).update(body.get("hnsw_config") or {})
        return web.json_response({"result": True, "status": "ok"})

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.deleted.append(name)
        self.hnsw.pop(name, None)
        if self.collections.pop(name, None) is None:
            return web.json_response({"status": {"error": "Not found"}}, status=404)
        return web.json_response({"result": True, "status": "ok"})

    @staticmethod
    def _matches(payload: dict[str, Any], flt: dict[str, Any]) -> bool:
        def hit(cond: dict[str, Any]) -> bool:
            return bool(payload.get(cond["key"]) == cond["match"]["value"])

        return all(hit(c) for c in flt.get("must", [])) and not any(
            hit(c) for c in flt.get("must_not", [])
        )

    async def _count(self, request: web.Request) -> web.Response:
        return await self.count(request)  # looked up per call: a test may wrap it

    async def count(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.collections:
            return web.json_response({"status": {"error": "Not found"}}, status=404)
        flt = (await request.json()).get("filter") or {}
        n = sum(self._matches(p, flt) for p in self.points.get(name, []))
        return web.json_response({"result": {"count": n}, "status": "ok"})

    async def delete_points(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.collections:
            return web.json_response({"status": {"error": "Not found"}}, status=404)
        flt = (await request.json())["filter"]
        self.points[name] = [p for p in self.points.get(name, []) if not self._matches(p, flt)]
        return web.json_response({"result": {"status": "completed"}, "status": "ok"})

    async def index(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.collections[request.match_info["name"]]["schema"].add(body["field_name"])
        return web.json_response({"result": {"status": "completed"}, "status": "ok"})


@pytest.fixture
async def qdrant() -> AsyncIterator[tuple[FakeQdrant, str]]:
    fake = FakeQdrant()
    server = TestServer(fake.app())
    await server.start_server()
    yield fake, str(server.make_url(""))
    await server.close()


async def test_creates_a_missing_collection_with_its_tenant_index(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    fake, url = qdrant
    assert await ensure_collection(url, "c", 384, "tenant", api_key="k") is True
    assert fake.collections["c"] == {"size": 384, "schema": {"tenant"}}
    assert set(fake.keys) == {"k"}
    assert await ensure_collection(url, "c", 384, "tenant", api_key="k") is False  # idempotent
    assert fake.deleted == []


async def test_a_collection_gets_a_graph_per_partition_and_none_over_all_entries(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    """New collections are made with `m=0, payload_m=16`. One made before (Qdrant's default
    `m=16`) is left to the gateways: they re-make its indexes without graphs before switching
    it (a switch starts the rebuild at once, with the indexes' settings as they are then), and
    the Job only knows the tenant index."""
    fake, url = qdrant
    assert await ensure_collection(url, "new", 384, "partition") is True
    assert fake.hnsw["new"] == {"m": 0, "payload_m": 16}
    fake.collections["old"] = {"size": 384, "schema": {"scope", "keyspace", "tenant"}}
    fake.points["old"] = [{"policy": "ns/p"}]
    assert await ensure_collection(url, "old", 384, "partition") is False
    assert fake.patches == [] and "old" not in fake.hnsw
    assert fake.deleted == [] and fake.points["old"] == [{"policy": "ns/p"}]
    assert "partition" in fake.collections["old"]["schema"]


async def test_a_server_before_1_17_keeps_its_default_graph(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    """Such a server ignores `enable_hnsw: false`: with `m=0` it would link graphs for every
    large value of every index, so the Job does not ask for the layout."""
    fake, url = qdrant
    fake.version = "1.12.4"
    assert await ensure_collection(url, "new", 384, "partition") is True
    assert fake.hnsw["new"] == {}
    assert "partition" in fake.collections["new"]["schema"]


async def test_recreates_a_cache_collection_made_for_another_vector_size(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    fake, url = qdrant
    fake.collections["c"] = {"size": 384, "schema": {"scope", "keyspace", "tenant"}}
    assert await ensure_collection(url, "c", 1536, "tenant", recreate=True) is True
    assert fake.deleted == ["c"]
    assert fake.collections["c"] == {"size": 1536, "schema": {"tenant"}}


async def test_never_recreates_a_collection_holding_other_policies_entries(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    """Default names of two namespaces can coincide (`team-a`/`cache` and `team`/`a-cache`): a
    new vector size for one never drops the other's entries."""
    fake, url = qdrant
    fake.collections["c"] = {"size": 384, "schema": {"scope", "keyspace", "policy"}}
    fake.points["c"] = [{"policy": "team-a/cache"}, {"policy": "team/a-cache"}]
    with pytest.raises(CollectionMismatch, match="1 entries of other policies"):
        await ensure_collection(url, "c", 1536, "tenant", recreate=True, policy="team-a/cache")
    assert fake.deleted == [] and fake.collections["c"]["size"] == 384
    fake.points["c"] = [{"policy": "team-a/cache"}]  # its own entries only: recreated
    assert await ensure_collection(url, "c", 1536, "tenant", recreate=True, policy="team-a/cache")
    assert fake.deleted == ["c"] and fake.collections["c"]["size"] == 1536


async def test_policies_deleted_together_leave_no_collection_behind(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    """Each delete Job counted the other's entries; the one that finds the collection empty
    after deleting its own drops it."""
    fake, url = qdrant
    fake.collections["c"] = {"size": 384, "schema": {"policy"}}
    fake.points["c"] = [{"policy": "ns/a"}, {"policy": "ns/b"}]
    real_count = fake.count
    calls = 0

    async def others_gone_meanwhile(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 2:  # ns/b's Job deleted its entries between ns/a's count and its delete
            fake.points["c"] = [p for p in fake.points["c"] if p["policy"] != "ns/b"]
        return await real_count(request)

    fake.count = others_gone_meanwhile  # type: ignore[method-assign]
    assert await delete_collection(url, "c", policy="ns/a") is True
    assert fake.deleted == ["c"]


async def test_never_touches_a_foreign_collection_of_another_size(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    fake, url = qdrant
    fake.collections["c"] = {"size": 768, "schema": {"title"}}
    with pytest.raises(CollectionMismatch, match="not a Thrifty cache collection"):
        await ensure_collection(url, "c", 384, "tenant", recreate=True)
    assert fake.deleted == []
    assert fake.collections["c"] == {"size": 768, "schema": {"title"}}


async def test_never_recreates_a_collection_the_user_named(qdrant: tuple[FakeQdrant, str]) -> None:
    """A named collection may hold other policies' entries: a size change is refused."""
    fake, url = qdrant
    fake.collections["c"] = {"size": 384, "schema": {"scope", "keyspace", "tenant"}}
    with pytest.raises(CollectionMismatch, match="may be shared"):
        await ensure_collection(url, "c", 1536, "tenant")
    assert fake.deleted == [] and fake.collections["c"]["size"] == 384


async def test_a_policy_alone_in_its_collection_drops_it(qdrant: tuple[FakeQdrant, str]) -> None:
    fake, url = qdrant
    fake.collections["c"] = {"size": 384, "schema": {"scope", "keyspace", "policy"}}
    fake.points["c"] = [{"policy": "ns/a"}, {"policy": "ns/a"}]
    assert await delete_collection(url, "c", "k", policy="ns/a") is True
    assert fake.deleted == ["c"] and "c" not in fake.collections
    assert await delete_collection(url, "c", "k", policy="ns/a") is False  # already gone


async def test_a_shared_collection_loses_only_the_going_policys_entries(
    qdrant: tuple[FakeQdrant, str],
) -> None:
    """Another policy names the same collection, or another namespace's default name coincides
    (`team-a`/`cache` and `team`/`a-cache`): its entries and the collection stay."""
    fake, url = qdrant
    fake.collections["thrifty-team-a-cache"] = {"size": 384, "schema": {"policy"}}
    fake.points["thrifty-team-a-cache"] = [
        {"policy": "team-a/cache", "tenant": "x"},
        {"policy": "team/a-cache", "tenant": "x"},
        {"policy": "team-a/cache", "tenant": "y"},
    ]
    dropped = await delete_collection(url, "thrifty-team-a-cache", policy="team-a/cache")
    assert dropped is False and fake.deleted == []
    assert fake.points["thrifty-team-a-cache"] == [{"policy": "team/a-cache", "tenant": "x"}]
    # The last policy going drops the collection.
    assert await delete_collection(url, "thrifty-team-a-cache", policy="team/a-cache") is True
    assert fake.deleted == ["thrifty-team-a-cache"]


async def test_without_a_policy_the_collection_is_dropped(qdrant: tuple[FakeQdrant, str]) -> None:
    """What Jobs made by an earlier operator ask for."""
    fake, url = qdrant
    fake.collections["c"] = {"size": 384, "schema": {"policy"}}
    fake.points["c"] = [{"policy": "ns/other"}]
    assert await delete_collection(url, "c") is True
    assert fake.deleted == ["c"]
