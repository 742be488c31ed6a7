"""The codec server: decrypted payloads for operators, in the Temporal Web UI and CLI.

Temporal stores Keel's payloads sealed per tenant (``keel._codec``), so its Web UI shows
ciphertext. This server speaks Temporal's codec server protocol (``POST .../decode`` and
``POST .../encode``, ``Payloads`` as protobuf JSON, an ``X-Namespace`` header) with the key store,
so the UI (``TEMPORAL_CODEC_ENDPOINT``, or ``keel up``'s dev server) and the CLI
(``temporal workflow show --codec-endpoint URL --codec-auth "Bearer TOKEN"``) show what runs
received and returned.

Holding the key store, it decrypts for no one by default. Every request carries a token
(``Authorization: Bearer TOKEN``) listed, as its SHA-256 only, in ``codec_tokens_path``; the
token names a role and the tenants it may read:

* ``viewer`` sees decoded payloads;
* ``auditor`` also sees the documents behind claim-check references (blob keys in a payload are
  replaced by the blob's text, truncated), since a run's history holds only those keys.

A request without a known token gets 401; a request with any payload of a tenant the token may
not read gets 403 and nothing decoded (the deployment key, ``_deployment``, only for ``*``).
Payloads that are not sealed pass through unchanged.

The embedded default (``keel up``) cannot make the dev server's UI send a header, so it also
accepts the token as a path prefix, ``/t/TOKEN/decode``, and gives the UI that URL: only for a
single machine, where whoever can open the loopback UI is trusted anyway. Production sends the
header over TLS behind the operators' SSO (``infra/k8s/codec-server.yaml``).

    python -m keel.codec_server [--host 127.0.0.1] [--port 8234]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cryptography.exceptions import InvalidTag
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from keel._codec import ENCRYPTED, KeelCodec, Keys, tenant_scope
from keel.blobs import BlobStore
from keel.config import KeelSettings
from keel.errors import PermissionDenied
from keel.keys import DEPLOYMENT, _write_private, check_tenant

log = logging.getLogger("keel.codec_server")

ROLES = ("viewer", "auditor")
ALL_TENANTS = "*"
MAX_BODY_BYTES = 32 * 1024 * 1024
BLOB_PREVIEW_BYTES = 64 * 1024  # per expanded blob
EXPANDED_BYTES_PER_REQUEST = 4 * 1024 * 1024  # past this, references stay keys
_BLOB_KEY = re.compile(r"[0-9a-f]{64}")
_ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Namespace", "Authorization-Extras"]


# --- tokens ----------------------------------------------------------------------------------


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What one token may do: its role and the tenants whose payloads it may read and write."""

    name: str
    role: str
    tenants: tuple[str, ...]

    def may_act_for(self, tenant: str) -> bool:
        """The deployment key's payloads are nobody's tenant: only ``*`` reads them."""
        if ALL_TENANTS in self.tenants:
            return True
        return tenant != DEPLOYMENT and tenant in self.tenants

    @property
    def sole_tenant(self) -> str | None:
        """The tenant an encode seals for when the payload names none (a one-tenant token)."""
        return self.tenants[0] if len(self.tenants) == 1 and self.tenants[0] != ALL_TENANTS else None


def _read_tokens(path: Path) -> list[dict]:
    try:
        return json.loads(Path(path).read_text()).get("tokens", [])
    except FileNotFoundError:
        return []


def _write_tokens(path: Path, tokens: list[dict]) -> None:
    _write_private(Path(path), json.dumps({"tokens": tokens}, indent=1))


def add_token(settings: KeelSettings, name: str, role: str, tenants: list[str]) -> str:
    """Create a token and return it: only its hash is stored, so this is the one time it is
    seen. ``tenants`` lists tenant names, or ``["*"]`` for every tenant and the deployment key."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if not name or not isinstance(name, str):
        raise ValueError("a token needs a name")
    tenants = list(dict.fromkeys(tenants))
    if not tenants:
        raise ValueError("a token needs at least one tenant (or '*')")
    for t in tenants:
        if t != ALL_TENANTS:
            check_tenant(t)
    rows = _read_tokens(settings.codec_tokens_path)
    if any(r.get("name") == name for r in rows):
        raise ValueError(f"a codec token named {name!r} exists: revoke it first")
    token = secrets.token_urlsafe(32)
    rows.append({"sha256": _sha256(token), "name": name, "role": role, "tenants": tenants, "created": int(time.time())})
    _write_tokens(settings.codec_tokens_path, rows)
    return token


def list_tokens(settings: KeelSettings) -> list[dict]:
    """Name, role, tenants and creation time of every token (never the hashes)."""
    return [{k: r.get(k) for k in ("name", "role", "tenants", "created")} for r in _read_tokens(settings.codec_tokens_path)]


def revoke_token(settings: KeelSettings, name: str) -> bool:
    """Remove the named token; a running server refuses it from its next request on."""
    rows = _read_tokens(settings.codec_tokens_path)
    kept = [r for r in rows if r.get("name") != name]
    if len(kept) == len(rows):
        return False
    _write_tokens(settings.codec_tokens_path, kept)
    return True


class TokenTable:
    """The tokens file, re-read whenever it changes: an added or revoked token takes effect
    without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._grants: dict[str, Grant] = {}

    def _load(self) -> dict[str, Grant]:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._stamp, self._grants = None, {}
            return self._grants
        if stamp != self._stamp:
            grants = {}
            for r in _read_tokens(self.path):
                if r.get("role") in ROLES and isinstance(r.get("sha256"), str) and isinstance(r.get("tenants"), list):
                    grants[r["sha256"]] = Grant(str(r.get("name", "?")), r["role"], tuple(map(str, r["tenants"])))
            self._grants, self._stamp = grants, stamp
        return self._grants

    def find(self, token: str | None) -> Grant | None:
        # Looked up by the hash of a 256-bit random token: timing reveals nothing usable.
        return self._load().get(_sha256(token)) if token else None


# --- decoding and encoding -------------------------------------------------------------------


class Refused(Exception):
    """A request answered with ``status`` and nothing decoded or encoded."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sealed_tenant(payload: Payload) -> str | None:
    """The tenant whose key sealed ``payload`` (from its clear ``keel-key``), ``None`` if it is
    not sealed. Read before decrypting so authorisation never needs the plaintext."""
    if payload.metadata.get("encoding") != ENCRYPTED:
        return None
    tenant, _, version = payload.metadata.get("keel-key", b"").decode(errors="replace").rpartition(":")
    try:
        if not version.isdigit():
            raise ValueError(version)
        return tenant if tenant == DEPLOYMENT else check_tenant(tenant)  # a name, never a path
    except ValueError:
        raise Refused(400, "an encrypted payload without a valid key id") from None


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit


class CodecService:
    """The codec with authorisation: what a :class:`Grant` may decode and encode."""

    def __init__(self, settings: KeelSettings) -> None:
        # Never creates a tenant: an encode for an unknown tenant is refused.
        self.keys = Keys(keys_dir=settings.keys_dir, master_key_file=settings.master_key_path,
                         keyring=settings.keyring_path, auto_create=False)
        self.keys.require_store()
        self.codec = KeelCodec(self.keys)
        self.blobs = BlobStore(settings.blob_dir, self.keys)

    def decode(self, grant: Grant, payloads: list[Payload]) -> list[Payload]:
        tenants = [sealed_tenant(p) for p in payloads]
        refused = sorted({t for t in tenants if t is not None and not grant.may_act_for(t)})
        if refused:
            raise Refused(403, f"token {grant.name!r} may not decode payloads of {', '.join(refused)}")
        budget = _Budget(EXPANDED_BYTES_PER_REQUEST)
        out = []
        for p, tenant in zip(payloads, tenants):
            if tenant is None:
                out.append(p)
                continue
            try:
                _, inner = self.codec.open(p)
            except (PermissionDenied, ValueError, DecodeError) as e:  # e.g. an erased tenant: left as is
                log.info("left a payload of %s sealed: %s", tenant, getattr(e, "message", e))
                out.append(p)
                continue
            out.append(self.expand_references(inner, tenant, budget) if grant.role == "auditor" else inner)
        return out

    def encode(self, grant: Grant, payloads: list[Payload]) -> list[Payload]:
        with tenant_scope(grant.sole_tenant):
            tenants = [self.codec.tenant_for(p) for p in payloads]
        refused = sorted({t for t in tenants if not grant.may_act_for(t)})
        if refused:
            raise Refused(403, f"token {grant.name!r} may not encode payloads for {', '.join(refused)}")
        try:
            return [self.codec.seal(p, t if t == DEPLOYMENT else check_tenant(t)) for p, t in zip(payloads, tenants)]
        except ValueError as e:
            raise Refused(400, str(e)) from None
        except PermissionDenied as e:
            raise Refused(403, e.message) from None

    def expand_references(self, payload: Payload, tenant: str, budget: _Budget) -> Payload:
        """A JSON payload whose blob keys of ``tenant`` are replaced by ``{"key", "content"}``."""
        if payload.metadata.get("encoding") != b"json/plain":
            return payload
        try:
            value = json.loads(payload.data)
        except (ValueError, RecursionError):
            return payload
        found: dict[str, dict | None] = {}

        def walk(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            if isinstance(v, list):
                return [walk(x) for x in v]
            if isinstance(v, str) and _BLOB_KEY.fullmatch(v):
                if v not in found:
                    found[v] = self._blob_preview(v, tenant, budget)
                return found[v] or v
            return v

        try:
            expanded = walk(value)
        except RecursionError:
            return payload
        if not any(found.values()):
            return payload
        out = Payload()
        out.CopyFrom(payload)
        out.data = json.dumps(expanded, ensure_ascii=False, separators=(",", ":")).encode()
        return out

    def _blob_preview(self, key: str, tenant: str, budget: _Budget) -> dict | None:
        if budget.left <= 0:
            return None
        try:
            data = self.blobs.get(key, tenant)
        except (OSError, InvalidTag, PermissionDenied, ValueError):
            return None  # not a blob of this tenant (or no longer readable): leave the string
        preview = data[:BLOB_PREVIEW_BYTES]
        budget.left -= len(preview)
        doc: dict = {"key": key, "content": preview.decode("utf-8", errors="replace")}
        if len(data) > len(preview):
            doc["truncated"] = True
        return doc


# --- HTTP --------------------------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    """The request's token: the ``Authorization`` header, else a path ending ``/t/TOKEN/decode``."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    segments = request.path_params.get("prefix", "").split("/")
    return segments[-1] if len(segments) >= 2 and segments[-2] == "t" and segments[-1] else None


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refused(413, "request too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, "request too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="keel-codec"'} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _endpoint(service: CodecService, tokens: TokenTable, op: str) -> Callable:
    apply = service.decode if op == "decode" else service.encode

    async def handle(request: Request) -> Response:
        grant = tokens.find(_bearer(request))
        namespace = request.headers.get("x-namespace", "")
        if grant is None:
            log.warning("%s refused (401): no valid token, namespace %r", op, namespace)
            return _error(401, "a valid codec token is required (Authorization: Bearer TOKEN)")
        try:
            try:
                payloads = list(json_format.Parse(await _body(request), Payloads(), ignore_unknown_fields=True).payloads)
            except (json_format.ParseError, UnicodeDecodeError, ValueError) as e:
                raise Refused(400, f"not a Payloads JSON body: {e}") from None
            result = await run_in_threadpool(apply, grant, payloads)
        except Refused as e:
            log.warning("%s by %r (%s) refused (%d): %s", op, grant.name, grant.role, e.status, e.message)
            return _error(e.status, e.message)
        # The audit trail: who read or wrote which tenants' payloads.
        tenants = sorted({t for t in (sealed_tenant(p) for p in (payloads if op == "decode" else result)) if t})
        log.info("%s by %r (%s), namespace %r: %d payload(s) of %s", op, grant.name, grant.role, namespace,
                 len(payloads), ", ".join(tenants) or "no tenant")
        text = json_format.MessageToJson(Payloads(payloads=result), indent=None) if result else '{"payloads": []}'
        return Response(text, media_type="application/json")

    return handle


def cors_origins(settings: KeelSettings) -> list[str]:
    """``codec_cors_origins``, else the Web UI's origin (both loopback spellings if local)."""
    if settings.codec_cors_origins:
        return list(settings.codec_cors_origins)
    ui = urlparse(settings.ui_url)
    origins = [f"{ui.scheme}://{ui.netloc}"]
    if ui.hostname in ("127.0.0.1", "localhost"):
        other = "localhost" if ui.hostname == "127.0.0.1" else "127.0.0.1"
        origins.append(f"{ui.scheme}://{other}" + (f":{ui.port}" if ui.port else ""))
    return origins


def create_app(settings: KeelSettings) -> Starlette:
    """The codec server's ASGI app; raises ``PermissionDenied`` where there is no master key."""
    service = CodecService(settings)
    tokens = TokenTable(settings.codec_tokens_path)
    routes = []
    for op in ("decode", "encode"):
        # The protocol looks only at the path's last segment: a proxy may mount us anywhere.
        for path in (f"/{op}", f"/{{prefix:path}}/{op}"):
            routes.append(Route(path, _endpoint(service, tokens, op), methods=["POST"]))
    cors = Middleware(
        CORSMiddleware, allow_origins=cors_origins(settings), allow_methods=["POST"],
        allow_headers=_ALLOWED_HEADERS, allow_credentials=True, max_age=600,
    )
    return Starlette(routes=routes, middleware=[cors])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m keel.codec_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    settings = KeelSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except PermissionDenied as e:
        raise SystemExit(f"keel.codec_server: {e.message}") from None
    # No access log: the embedded default's token is part of the path.
    uvicorn.run(app, host=args.host, port=args.port or settings.codec_port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
