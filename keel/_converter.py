"""Keel's data converter: temporalio's pydantic converter with one process-wide cache of
pydantic type adapters for Keel's own (and the standard library's) types.

temporalio builds a new payload converter, with an empty adapter cache, for every workflow run;
rebuilding the adapters of Keel's nested types was most of a short workflow's CPU time
(measured: ~65 ms per ask). Keel's types are passed through the sandbox, so they are the same
objects in every run and can share adapters. A user's types are re-imported in each run's
sandbox: caching them across runs would keep every run's modules alive, so they keep the
per-run cache.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import TypeAdapter
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import CompositePayloadConverter, DataConverter, DefaultPayloadConverter, JSONPlainPayloadConverter

_SHARED_MODULES = {"keel", "builtins", "typing", "types", "datetime", "decimal", "uuid", "collections", "pathlib"}


@functools.lru_cache(maxsize=512)
def _shared_adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint)


def _shareable(hint: Any) -> bool:
    args = typing.get_args(hint)
    if args:
        origin = typing.get_origin(hint)
        return (origin is None or _shareable(origin)) and all(_shareable(a) for a in args if a is not ...)
    if hint is Any or hint is None or isinstance(hint, (str, int, types.NoneType)):
        return True
    return str(getattr(hint, "__module__", "")).split(".")[0] in _SHARED_MODULES


class _KeelJSONConverter(PydanticJSONPlainPayloadConverter):
    def from_payload(self, payload, type_hint=None):
        hint = Any if type_hint is None else type_hint
        try:
            shareable = _shareable(hint) and hash(hint) is not None
        except TypeError:
            shareable = False
        if shareable:
            return _shared_adapter(hint).validate_json(payload.data)
        return super().from_payload(payload, type_hint)


class KeelPayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(
            *(
                _KeelJSONConverter() if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )

    def from_payloads(self, payloads, type_hints=None):
        # The codec (keel._codec) marks what it refused, and which tenant's key opened the rest:
        # a refusal, or a value naming another tenant, is raised as PermissionDenied here, where
        # the SDK fails the run (or drops the signal, refuses the query) instead of retrying.
        from keel._codec import DENIED, check_payload_tenant
        from keel.errors import PermissionDenied

        for p in payloads:
            if p.metadata.get("encoding") == DENIED:
                raise PermissionDenied(p.data.decode())
            check_payload_tenant(p)
        return super().from_payloads(payloads, type_hints)


def is_default(converter: DataConverter | None) -> bool:
    return converter is None or converter.payload_converter_class in (
        DataConverter.default.payload_converter_class,
        PydanticPayloadConverter,
    )


keel_data_converter = DataConverter(payload_converter_class=KeelPayloadConverter)
