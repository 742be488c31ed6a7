"""The codec server over real HTTP: a uvicorn server on a loopback port, real sealed payloads.

It decodes for an authorised token, and refuses without one (401) or for another tenant (403),
answering nothing decoded; auditors see the documents behind claim-check references.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time

import httpx
import pytest
import uvicorn
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from keel._codec import KeelCodec, Keys
from keel.blobs import BlobStore
from keel.codec_server import add_token, create_app, list_tokens, revoke_token
from keel.config import KeelSettings
from keel.keys import DEPLOYMENT
from keel.stack import Stack
from keel.testing._env import free_port

SECRET = "Jane Roe's claim 4111 1111 1111 1111"
DOCUMENT = b"The full contract of Acme Corp: Jane Roe, account 12345."


def plain(value: dict) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def body(*payloads: Payload) -> str:
    return json_format.MessageToJson(Payloads(payloads=list(payloads)))


def payloads_of(response: httpx.Response) -> list[Payload]:
    return list(json_format.Parse(response.text, Payloads()).payloads)


class Deployment:
    def __init__(self, settings: KeelSettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.codec = KeelCodec(Keys.from_settings(settings))
        self.blobs = BlobStore(settings.blob_dir, self.codec.keys)
        self.tokens = {
            "acme-viewer": add_token(settings, "acme-viewer", "viewer", ["acme"]),
            "acme-auditor": add_token(settings, "acme-auditor", "auditor", ["acme"]),
            "admin": add_token(settings, "admin", "viewer", ["*"]),
        }

    def sealed(self, tenant: str, value: dict) -> Payload:
        return self.codec.seal(plain(value), tenant)

    def post(self, path: str, *payloads: Payload, token: str | None = None, **headers: str) -> httpx.Response:
        if token:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        return httpx.post(self.url + path, content=body(*payloads), timeout=10,
                          headers={"Content-Type": "application/json", "X-Namespace": "default", **headers})


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> Deployment:
    settings = KeelSettings(data_dir=tmp_path_factory.mktemp("codec"), codec_port=free_port(), temporal_ui_port=free_port())
    Keys.from_settings(settings, create_master=True).store  # what `keel up` does first
    deployment = Deployment(settings, f"http://127.0.0.1:{settings.codec_port}")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.codec_port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the codec server did not start"
        time.sleep(0.05)
    yield deployment
    server.should_exit = True
    thread.join(10)


def test_decodes_for_an_authorised_token(codec):
    sealed = codec.sealed("acme", {"tenant": "acme", "question": SECRET})
    assert SECRET.encode() not in sealed.data
    response = codec.post("/decode", sealed, plain({"not": "sealed"}), token="acme-viewer")
    assert response.status_code == 200, response.text
    decoded, passed = payloads_of(response)
    assert decoded.metadata["encoding"] == b"json/plain"
    assert json.loads(decoded.data) == {"tenant": "acme", "question": SECRET}
    assert json.loads(passed.data) == {"not": "sealed"}  # plain payloads pass through


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_refuses_without_a_valid_token(codec, token):
    response = codec.post("/decode", codec.sealed("acme", {"question": SECRET}), token=token)
    assert response.status_code == 401
    assert "payloads" not in response.json()


def test_refuses_another_tenants_payloads_and_decodes_nothing(codec):
    mine = codec.sealed("acme", {"question": SECRET})
    theirs = codec.sealed("globex", {"question": "Globex merger terms"})
    response = codec.post("/decode", mine, theirs, token="acme-viewer")
    assert response.status_code == 403
    assert "payloads" not in response.json()
    for text in (SECRET, "Globex merger", base64.b64encode(SECRET.encode()).decode()[:24]):
        assert text not in response.text
    forged = Payload(metadata={"encoding": b"binary/keel-encrypted", "keel-key": b"../acme:1"}, data=bytes(40))
    assert codec.post("/decode", forged, token="admin").status_code == 400
    # The deployment key's payloads belong to no tenant: only "*" reads them.
    codec.codec.keys.require_store().create(DEPLOYMENT)
    deployment = codec.sealed(DEPLOYMENT, {"breaker": "open"})
    assert codec.post("/decode", deployment, token="acme-viewer").status_code == 403
    assert json.loads(payloads_of(codec.post("/decode", deployment, theirs, token="admin"))[0].data) == {"breaker": "open"}


def test_auditor_sees_the_document_behind_a_reference(codec):
    key = codec.blobs.put(DOCUMENT, "acme")
    sealed = codec.sealed("acme", {"tenant": "acme", "content_key": key, "chunks": [{"blob_key": key}], "run": "a" * 64})
    viewed = json.loads(payloads_of(codec.post("/decode", sealed, token="acme-viewer"))[0].data)
    assert viewed["content_key"] == key and "Acme Corp" not in json.dumps(viewed)
    audited = json.loads(payloads_of(codec.post("/decode", sealed, token="acme-auditor"))[0].data)
    assert audited["content_key"] == {"key": key, "content": DOCUMENT.decode()}
    assert audited["chunks"] == [{"blob_key": {"key": key, "content": DOCUMENT.decode()}}]
    assert audited["run"] == "a" * 64  # 64 hex characters but no blob of the tenant: left alone


def test_cors_for_the_web_ui(codec):
    origin = codec.settings.ui_url
    preflight = httpx.options(codec.url + "/decode", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    })
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-credentials"] == "true"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert all(h in allowed for h in ("authorization", "content-type", "x-namespace"))
    answer = codec.post("/decode", codec.sealed("acme", {"q": 1}), token="acme-viewer", Origin=origin)
    assert answer.headers["access-control-allow-origin"] == origin
    refused = codec.post("/decode", token=None, Origin=origin)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
    elsewhere = codec.post("/decode", token="acme-viewer", Origin="https://evil.example")
    assert "access-control-allow-origin" not in elsewhere.headers


def test_encode_round_trip(codec):
    response = codec.post("/encode", plain({"tenant": "acme", "approved": True}), plain({"comment": "ok"}), token="acme-viewer")
    assert response.status_code == 200, response.text
    named, unnamed = payloads_of(response)
    assert named.metadata["keel-key"].startswith(b"acme:")
    assert unnamed.metadata["keel-key"].startswith(b"acme:")  # a one-tenant token seals for it
    decoded = payloads_of(codec.post("/decode", named, unnamed, token="acme-viewer"))
    assert [json.loads(p.data) for p in decoded] == [{"tenant": "acme", "approved": True}, {"comment": "ok"}]
    assert codec.post("/encode", plain({"tenant": "globex"}), token="acme-viewer").status_code == 403
    assert codec.post("/encode", plain({"tenant": "acme"})).status_code == 401


def test_token_in_the_path_and_revocation(codec):
    sealed = codec.sealed("acme", {"question": SECRET})
    token = add_token(codec.settings, "short-lived", "viewer", ["acme"])
    assert codec.post(f"/t/{token}/decode", sealed).status_code == 200
    assert codec.post("/t/not-a-token/decode", sealed).status_code == 401
    assert codec.post("/mounted/deeper/decode", sealed, token="acme-viewer").status_code == 200  # any prefix
    assert codec.post(f"/mounted/t/{token}/decode", sealed).status_code == 200
    assert [t["name"] for t in list_tokens(codec.settings)][-1] == "short-lived"
    assert revoke_token(codec.settings, "short-lived")
    assert codec.post(f"/t/{token}/decode", sealed).status_code == 401  # at once, no restart
    assert not any("sha256" in t for t in list_tokens(codec.settings))


def test_keel_up_wires_the_dev_server_ui_to_the_codec_server(codec):
    cmd = Stack(codec.settings).dev_server_cmd("127.0.0.1", "7233")
    endpoint = cmd[cmd.index("--ui-codec-endpoint") + 1]
    token_file = codec.settings.data_dir / "codec-ui-token"
    assert endpoint == f"{codec.url}/t/{token_file.read_text()}"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert Stack(codec.settings).ui_codec_endpoint() == endpoint  # a restart reuses the token
    # The UI's token is an auditor for every tenant, served by the running codec server.
    response = httpx.post(endpoint + "/decode", content=body(codec.sealed("globex", {"q": SECRET})),
                          headers={"Content-Type": "application/json"})
    assert json.loads(payloads_of(response)[0].data) == {"q": SECRET}
    off = codec.settings.model_copy(update={"encryption": False})
    assert "--ui-codec-endpoint" not in Stack(off).dev_server_cmd("127.0.0.1", "7233")
