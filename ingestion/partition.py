"""Turn a file into a list of typed text elements with ``unstructured``.

Bad input is rejected here with a :class:`keel.errors.BadDocument` subclass that says what is
wrong, so one bad file fails only its own document, never the batch.
"""

from __future__ import annotations

import io
from pathlib import Path

from keel.errors import (
    BinaryContent,
    CorruptDocument,
    DocumentTooLarge,
    EmptyDocument,
    InvalidEncoding,
    UnsupportedFormat,
)
from keel.offline import use_installed_spacy_model_for_unstructured

TEXT_FORMATS = {".txt": "text", ".text": "text", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}
BINARY_FORMATS = {".pdf": "pdf", ".docx": "docx"}
LANGUAGES = ["eng"]
SUPPORTED_SUFFIXES = frozenset(TEXT_FORMATS) | frozenset(BINARY_FORMATS)


def partition_document(data: bytes, name: str, *, max_bytes: int = 50_000_000) -> list[dict[str, str]]:
    """Elements of the file ``name`` (whose bytes are ``data``) as
    ``[{"type": "Title" | "NarrativeText" | ..., "text": ...}]``; the suffix picks the parser."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFormat(
            f"{name}: unsupported file type {suffix or '(none)'}; "
            f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    if not data:
        raise EmptyDocument(f"{name}: the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise DocumentTooLarge(f"{name}: {len(data)} bytes exceeds the limit of {max_bytes}")

    use_installed_spacy_model_for_unstructured()
    if suffix in TEXT_FORMATS:
        elements = _partition_text(decode_text(data, name), TEXT_FORMATS[suffix])
    else:
        elements = _partition_binary(data, name, BINARY_FORMATS[suffix])

    out = [{"type": el.category, "text": el.text.strip()} for el in elements if el.text and el.text.strip()]
    if not out:
        raise EmptyDocument(f"{name}: no extractable text (a scanned PDF would need OCR, which is off)")
    return out


def decode_text(data: bytes, name: str) -> str:
    head = data[:8192]
    if b"\x00" in head or _control_ratio(head) > 0.1:
        raise BinaryContent(f"{name}: binary content in a text file (NUL or control bytes); is the extension wrong?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidEncoding(
            f"{name}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-save it as UTF-8"
        ) from None
    if not text.strip():
        raise EmptyDocument(f"{name}: the file contains only whitespace")
    return text


def _control_ratio(data: bytes) -> float:
    if not data:
        return 0.0
    controls = sum(1 for b in data if b < 32 and b not in (9, 10, 12, 13))
    return controls / len(data)


def _partition_text(text: str, kind: str):
    if kind == "md":
        from unstructured.partition.md import partition_md

        return partition_md(text=text, languages=LANGUAGES)
    if kind == "html":
        from unstructured.partition.html import partition_html

        return partition_html(text=text, languages=LANGUAGES)
    from unstructured.partition.text import partition_text

    return partition_text(text=text, languages=LANGUAGES)


def _partition_binary(data: bytes, name: str, kind: str):
    head = data[:8]
    if kind == "pdf":
        if not head.startswith(b"%PDF-"):
            raise CorruptDocument(f"{name}: not a PDF (missing %PDF- header)")
        _check_pdf_structure(data, name)
        from unstructured.partition.pdf import partition_pdf

        partition, kwargs = partition_pdf, {"strategy": "fast", "infer_table_structure": False, "languages": LANGUAGES}
    else:
        if not head.startswith(b"PK"):
            raise CorruptDocument(f"{name}: not a .docx (not a zip container)")
        from unstructured.partition.docx import partition_docx

        partition, kwargs = partition_docx, {"languages": LANGUAGES}
    try:
        return partition(file=io.BytesIO(data), **kwargs)
    except Exception as e:  # the parsers raise many unrelated types for damaged files
        raise CorruptDocument(f"{name}: cannot be parsed as {kind}: {type(e).__name__}: {e}") from None


def _check_pdf_structure(data: bytes, name: str) -> None:
    # unstructured logs and swallows pdfminer's parse errors, returning no elements; ask pypdf
    # first so a damaged file is reported as corrupt, not as empty.
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        pages = len(PdfReader(io.BytesIO(data), strict=False).pages)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise CorruptDocument(f"{name}: damaged PDF structure: {type(e).__name__}: {e}") from None
    if pages == 0:
        raise CorruptDocument(f"{name}: the PDF has no pages")
