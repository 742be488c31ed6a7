"""Idempotent side effects, thin adapters from Temporal to the ``ingestion`` and ``retrieval``
libraries. Heavy libraries (torch, unstructured, presidio, qdrant) load lazily inside them."""
