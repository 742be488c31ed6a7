"""PII scrubbing: Keel's recognizers on top of presidio's, and the policy's operators.

One scrubber for the module (loading spaCy and presidio takes seconds). Recall and precision on
the presidio-research set are measured by ``bench/pii_recall.py``, not here.
"""

from __future__ import annotations

import re

import pytest

from keel.types import DEFAULT_PII_ENTITIES, PIIOperator, PIIPolicy


@pytest.fixture(scope="module")
def scrubber():
    from keel.ingestion.pii import PIIScrubber

    return PIIScrubber(hash_key=b"test-deployment-secret")


def test_street_addresses_are_scrubbed_by_default(scrubber):
    assert "STREET_ADDRESS" in DEFAULT_PII_ENTITIES
    for text, secret in [
        ("Please ship it to 4210 Maple Grove Avenue Apt. 12, Springfield.", "Maple Grove"),
        ("Our office moved to Keizersgracht 123 last spring.", "Keizersgracht 123"),
        ("Send it to PSC 2721, Box 8637\nAPO AA 06259 please.", "Box 8637"),
    ]:
        clean, counts = scrubber.scrub(text)
        assert secret not in clean, clean
        assert counts.get("STREET_ADDRESS") == 1 and "<STREET_ADDRESS>" in clean


def test_address_block_lines_go_with_the_street():
    from keel.ingestion.pii import _extend_address_blocks

    class R:
        entity_type, start, end = "STREET_ADDRESS", 0, 18

    text = "11 Souterhead Road\n Suite 445\n LOW STREET\n United Kingdom 10543\n\nThanks, see you."
    (r,) = _extend_address_blocks(text, [R()])
    assert text[r.start : r.end] == "11 Souterhead Road\n Suite 445\n LOW STREET\n United Kingdom 10543"


def test_card_with_separators_and_without_luhn_in_context(scrubber):
    clean, counts = scrubber.scrub("My credit card is 4111-1111-1111-1111, the old card 3519 8332 5766 5854.")
    assert "4111" not in clean and "5854" not in clean
    assert counts == {"CREDIT_CARD": 2}
    # Without a card context word a Luhn-invalid digit group is left alone.
    clean, counts = scrubber.scrub("Order reference 3519 8332 5766 5854 shipped.")
    assert counts == {}


def test_international_phone_numbers(scrubber):
    for text, secret in [
        ("Desk: +41 (0)85 806 98 67", "806 98 67"),
        ("Fax: +1-903-140-4508x769", "140-4508"),
        ("Mobile: 0341 8387176", "8387176"),
        ("They're not answering at 374 780 163", "780 163"),
    ]:
        clean, counts = scrubber.scrub(text)
        assert secret not in clean and counts.get("PHONE_NUMBER") == 1, clean


def test_name_in_context(scrubber):
    for text, secret in [
        ("Name:    Iva D. Grusová\nPhone: 083 564 9312", "Grusová"),
        ("Please follow up with Dr. Cindy Holinka tomorrow.", "Holinka"),
        ("I took the position as the assistant to Magnus Poulsen last year.", "Poulsen"),
    ]:
        clean, counts = scrubber.scrub(text)
        assert secret not in clean and counts.get("PERSON") == 1, clean


def test_replace_operator_is_the_default(scrubber):
    clean, _ = scrubber.scrub("Mail jane.doe@example.com", PIIPolicy(operator=PIIOperator.REPLACE))
    assert clean == "Mail <EMAIL_ADDRESS>"
    assert PIIPolicy().operator == "replace"


def test_hash_operator_gives_stable_keyed_tokens(scrubber):
    policy = PIIPolicy(operator="hash", hash_salt="salt-of-this-run-0001")
    a, counts = scrubber.scrub("Mail jane.doe@example.com or jane.doe@example.com, not bob@example.com", policy)
    tokens = re.findall(r"<EMAIL_ADDRESS:([0-9a-f]{8})>", a)
    assert counts == {"EMAIL_ADDRESS": 3} and len(tokens) == 3
    assert tokens[0] == tokens[1] != tokens[2]
    assert "jane" not in a
    # Another salt (or another deployment key) gives other tokens: not a plain hash of the value.
    b, _ = scrubber.scrub("Mail jane.doe@example.com", PIIPolicy(operator="hash", hash_salt="salt-of-another-run-2"))
    assert re.findall(r"<EMAIL_ADDRESS:([0-9a-f]{8})>", b)[0] != tokens[0]
    import hashlib

    assert hashlib.sha256(b"jane.doe@example.com").hexdigest()[:8] not in a
    with pytest.raises(ValueError, match="hash_salt"):
        PIIPolicy(operator="hash")


def test_mask_operator_keeps_length_and_last_four_of_cards(scrubber):
    text = "Card 4111 1111 1111 1234, mail jane.doe@example.com"
    clean, counts = scrubber.scrub(text, PIIPolicy(operator="mask"))
    assert counts == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1}
    assert len(clean) == len(text)
    assert "**** **** **** 1234" in clean and "jane" not in clean and "example" not in clean


def test_policy_entities_choose_what_is_scrubbed(scrubber):
    clean, counts = scrubber.scrub(
        "Mail jane.doe@example.com, ship to 4210 Maple Grove Avenue.", PIIPolicy(entities=["EMAIL_ADDRESS"])
    )
    assert counts == {"EMAIL_ADDRESS": 1} and "Maple Grove Avenue" in clean
    with pytest.raises(ValueError, match="unknown operator"):
        PIIPolicy(operator="nope")


def test_prices_years_and_headings_are_not_house_numbers(scrubber):
    # "way", "island", "point" are street suffixes ("4210 Maple Way"), but a fare, a year and a
    # heading above a title are not addresses.
    for text in [
        "The shuttle runs from 16:00 to 22:00 and costs $3 each way.",
        "Tickets cost €12 per way, or 2.5 ways round the lake.",
        "Until 2019 Saltmarrow Island Light ran on two diesel generators.",
        "2025 SEASON\nGREYHAVEN POINT LIGHT",
    ]:
        clean, counts = scrubber.scrub(text)
        assert clean == text and "STREET_ADDRESS" not in counts, clean
    clean, counts = scrubber.scrub("The shuttle stops at 3 Harbour Way each hour.")
    assert "Harbour Way" not in clean and counts.get("STREET_ADDRESS") == 1, clean
