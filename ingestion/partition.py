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
    DocumentTooComplex,
    DocumentTooLarge,
    EmptyDocument,
    EncryptedDocument,
    InvalidEncoding,
    UnsupportedFormat,
)
from keel.offline import use_installed_spacy_model_for_unstructured

TEXT_FORMATS = {".txt": "text", ".text": "text", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}
BINARY_FORMATS = {".pdf": "pdf", ".docx": "docx"}
LANGUAGES = ["eng"]
SUPPORTED_SUFFIXES = frozenset(TEXT_FORMATS) | frozenset(BINARY_FORMATS)
# Hostile files are refused before a parser sees them, so memory stays bounded by these, not by
# what a file claims to hold: what a .docx may unpack to, and how deep HTML may nest.
MAX_UNPACKED_BYTES = 200_000_000
MAX_HTML_DEPTH = 512


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
        text = decode_text(data, name)
        if TEXT_FORMATS[suffix] == "html":
            check_html_depth(text, name)
        elements = _partition_text(text, TEXT_FORMATS[suffix])
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
        check_unpacked_size(data, name)
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
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise EncryptedDocument(f"{name}: the PDF is encrypted (password-protected); decrypt it first")
        pages = len(reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise CorruptDocument(f"{name}: damaged PDF structure: {type(e).__name__}: {e}") from None
    if pages == 0:
        raise CorruptDocument(f"{name}: the PDF has no pages")


def check_unpacked_size(data: bytes, name: str, limit: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a zip container (.docx) that unpacks to more than ``limit`` bytes: every member is
    decompressed as a stream and counted (sizes in the zip's directory can lie), nothing kept.

    >>> import io, zipfile
    >>> buf = io.BytesIO()
    >>> with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    ...     z.writestr("word/document.xml", b" " * 5_000_000)
    >>> check_unpacked_size(buf.getvalue(), "bomb.docx", limit=1_000_000)
    Traceback (most recent call last):
    keel.errors.DocumentTooLarge: bomb.docx: unpacks to more than 1000000 bytes (a zip bomb?)
    """
    import zipfile

    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                with z.open(info) as member:
                    while chunk := member.read(1 << 20):
                        total += len(chunk)
                        if total > limit:
                            raise DocumentTooLarge(f"{name}: unpacks to more than {limit} bytes (a zip bomb?)")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        raise CorruptDocument(f"{name}: damaged zip container: {type(e).__name__}: {e}") from None


def check_html_depth(text: str, name: str, limit: int = MAX_HTML_DEPTH) -> None:
    """Refuse HTML nested deeper than ``limit`` elements (parsers recurse through the tree).

    >>> check_html_depth("<div>" * 600, "deep.html")
    Traceback (most recent call last):
    keel.errors.DocumentTooComplex: deep.html: HTML nested deeper than 512 elements
    >>> check_html_depth("<p>fine</p><br><img src=x>", "ok.html")
    """
    from html.parser import HTMLParser

    void = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    class Depth(HTMLParser):
        depth = 0

        def handle_starttag(self, tag, attrs):
            if tag not in void:
                self.depth += 1
                if self.depth > limit:
                    raise DocumentTooComplex(f"{name}: HTML nested deeper than {limit} elements")

        def handle_endtag(self, tag):
            if tag not in void:
                self.depth = max(0, self.depth - 1)

    parser = Depth()
    parser.feed(text)
    parser.close()
