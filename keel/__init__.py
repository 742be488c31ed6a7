"""Keel: durable RAG pipelines on Temporal."""
