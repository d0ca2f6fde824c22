"""Bearer tokens on /v1 and the peer allowlist on LightLLM's endpoints, on a real server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pdlocal.cluster import ProcGroup
from pdlocal.registry import ConfigServer, start_config_server
from pdwire.lightllm import LightLLMCodec
from pdwire.pd_io import PD_Master_Obj
from tests.config_server.helpers import auth, http, node_body

ADMIN, REGISTER = "admin-secret", "register-secret"
ALLOWED_PEER = "127.0.0.2"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigServer]:
    """Tokens from the environment (as the docs recommend), LightLLM peers from 127.0.0.2 only."""
    group = ProcGroup(tmp_path_factory.mktemp("guarded"))
    env = {"PDCTL_ADMIN_TOKEN": ADMIN, "PDCTL_REGISTER_TOKEN": REGISTER}
    try:
        yield start_config_server(group, "--allow-cidr", f"{ALLOWED_PEER}/32", env=env)
    finally:
        group.stop_all()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/nodes/n1", node_body()),
        ("DELETE", "/v1/nodes/n1", None),
        ("PUT", "/v1/masters/7", {"address": "127.0.0.1:60011"}),
        ("GET", "/v1/nodes", None),
        ("GET", "/v1/masters", None),
        ("GET", "/v1/nodes/n1", None),
        ("GET", "/v1/watch?timeout_s=0", None),
    ],
)
def test_v1_without_a_token_is_401_and_with_a_wrong_one_403(
    guarded: ConfigServer, method: str, path: str, body: dict | None
) -> None:
    url = guarded.url + path
    missing = http().request(method, url, json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "unauthorized"
    for header in (auth("wrong"), {"Authorization": "Basic " + ADMIN}):
        reply = http().request(method, url, json=body, headers=header)
        assert reply.status_code in (401, 403)
    wrong = http().request(method, url, json=body, headers=auth("wrong"))
    assert wrong.status_code == 403
    assert wrong.json()["error"]["type"] == "forbidden"


def test_each_token_opens_what_it_is_for(guarded: ConfigServer) -> None:
    url = guarded.url
    assert http().put(f"{url}/v1/nodes/n1", json=node_body(), headers=auth(REGISTER)).is_success
    assert http().put(f"{url}/v1/nodes/n2", json=node_body(), headers=auth(ADMIN)).is_success
    assert http().get(f"{url}/v1/nodes", headers=auth(REGISTER)).status_code == 403
    listing = http().get(f"{url}/v1/nodes", headers=auth(ADMIN))
    assert [r["id"] for r in listing.json()["items"]] == ["n1", "n2"]
    for token in (REGISTER, ADMIN):  # masters watch with the register token
        watch = http().get(f"{url}/v1/watch?timeout_s=0", headers=auth(token))
        assert watch.status_code == 200
    for record_id in ("n1", "n2"):
        assert http().delete(f"{url}/v1/nodes/{record_id}", headers=auth(REGISTER)).is_success


def peer_client(local_address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=local_address), timeout=5)


@pytest.mark.parametrize(
    "path",
    [
        "/registered_objects",
        "/allocate_global_unique_id_range",
        "/allocate_global_unique_multimodal_id_range",
    ],
)
def test_lightllm_endpoints_refuse_peers_outside_the_allowlist(
    guarded: ConfigServer, path: str
) -> None:
    refused = http().get(guarded.url + path)  # from 127.0.0.1
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "peer_not_allowed"
    with peer_client(ALLOWED_PEER) as client:
        assert client.get(guarded.url + path).status_code == 200
    assert http().get(guarded.url + "/health").status_code == 200  # load balancers probe this


def test_master_registration_refuses_peers_outside_the_allowlist(guarded: ConfigServer) -> None:
    url = f"ws://{guarded.address}/pd_master_register"
    frame = LightLLMCodec().encode_pd_master_obj(PD_Master_Obj(31, "127.0.0.2:60011"))

    async def register(local: str) -> None:
        async with connect(url, local_addr=(local, 0)) as ws:
            await ws.send(frame)
            await ws.send("heartbeat")

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(register("127.0.0.1"))
    assert refused.value.response.status_code == 403
    with peer_client(ALLOWED_PEER) as client:
        data = client.get(guarded.url + "/registered_objects").json()["data"]
        assert LightLLMCodec().decode_registered_objects(base64.b64decode(data)) == {}
    asyncio.run(register(ALLOWED_PEER))  # the allowed peer gets through
