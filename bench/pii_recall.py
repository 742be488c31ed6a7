"""PII recall and precision of Keel's scrubber on a presidio-research-format file, against
presidio's defaults in the same run.

    .venv/bin/python bench/pii_recall.py --data ../shared/data/pii/synth_dev.json [--offset 500] [--limit 500]

The file is a JSON list of ``{"full_text", "spans": [{"entity_type", "entity_value",
"start_position", "end_position"}]}``. Both scrubbers get the texts in one ``scrub_many`` call
(spaCy batches) under the default :class:`keel.PIIPolicy`:

* recall, per type the policy scrubs: a planted span counts as found when the scrubbed text no
  longer contains its value (``PERSON_FULL_NAME``: the PERSON spans of two words or more);
* precision, per detected type: a detected span is right when it overlaps a planted span of the
  same type; ``"ALL"`` is over every detection;
* ``texts_per_s``: texts through ``scrub_many`` per second (analysis and anonymization).

Keel: :class:`keel.ingestion.pii.PIIScrubber` (presidio + Keel's recognizers, the policy's
threshold). Baseline: presidio's ``AnalyzerEngine()`` with the same spaCy model
(en_core_web_sm), its default recognizers and threshold, restricted to the same entity types,
and the default anonymizer. Prints ONE JSON line on stdout::

    {"n_texts": n, "recall": {TYPE: r}, "precision": {TYPE: p}, "texts_per_s": x,
     "presidio_defaults": {"recall": ..., "precision": ..., "texts_per_s": y}, "speed_ratio": x / y}

and, on stderr, the counts behind each ratio. ``--baseline`` skips Keel's scrubber and prints
presidio's numbers at the top level.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keel.offline import configure_offline  # noqa: E402

configure_offline()

from keel.types import PIIPolicy  # noqa: E402


class PresidioDefaults:
    """presidio out of the box (only the spaCy model named, since en_core_web_sm is installed
    under another name)."""

    def __init__(self) -> None:
        import logging

        from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine

        from keel.offline import SPACY_MODEL, use_bundled_public_suffix_list

        use_bundled_public_suffix_list()
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        nlp = NlpEngineProvider(
            nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}
        ).create_engine()
        self.analyzer = AnalyzerEngine(nlp_engine=nlp)
        self._batch = BatchAnalyzerEngine(self.analyzer)
        self._anonymizer = AnonymizerEngine()

    def _entities(self, policy: PIIPolicy) -> list[str]:
        supported = set(self.analyzer.get_supported_entities("en"))
        return [e for e in policy.entities if e in supported]

    def find_many(self, texts, policy):
        return list(self._batch.analyze_iterator(texts, language="en", entities=self._entities(policy)))

    def scrub_many(self, texts, policy):
        out = []
        for text, results in zip(texts, self.find_many(texts, policy)):
            out.append(self._anonymizer.anonymize(text=text, analyzer_results=results).text if results else text)
        return out, {}


def resolve(results: list) -> list:
    """Overlapping detections as the anonymizer resolves them: the higher score, then the
    longer span wins (so both scrubbers' precision counts what is actually replaced)."""
    kept: list = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start))):
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(r)
    return kept


def measure(scrubber, samples: list[dict], policy: PIIPolicy) -> tuple[dict, dict]:
    texts = [s["full_text"] for s in samples]
    t0 = time.perf_counter()
    scrubbed, _ = scrubber.scrub_many(texts, policy)
    elapsed = time.perf_counter() - t0
    found: Counter[str] = Counter()
    planted: Counter[str] = Counter()
    for sample, clean in zip(samples, scrubbed):
        for span in sample["spans"]:
            if span["entity_type"] in policy.entities:
                kinds = [span["entity_type"]]
                if span["entity_type"] == "PERSON" and len(span["entity_value"].split()) >= 2:
                    kinds.append("PERSON_FULL_NAME")  # the goal is for full names
                for kind in kinds:
                    planted[kind] += 1
                    found[kind] += span["entity_value"] not in clean
    right: Counter[str] = Counter()
    detected: Counter[str] = Counter()
    for sample, results in zip(samples, scrubber.find_many(texts, policy)):
        for r in resolve(results):
            detected[r.entity_type] += 1
            right[r.entity_type] += any(
                s["entity_type"] == r.entity_type and s["start_position"] < r.end and r.start < s["end_position"]
                for s in sample["spans"]
            )
    detected["ALL"], right["ALL"] = sum(detected.values()), sum(right.values())
    result = {
        "recall": {t: round(found[t] / planted[t], 3) for t in sorted(planted)},
        "precision": {t: round(right[t] / detected[t], 3) for t in sorted(detected) if detected[t]},
        "texts_per_s": round(len(texts) / elapsed, 1),
    }
    counts = {
        "found/planted": {t: f"{found[t]}/{planted[t]}" for t in sorted(planted)},
        "right/detected": {t: f"{right[t]}/{detected[t]}" for t in sorted(detected)},
    }
    return result, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--offset", type=int, default=0, help="skip this many texts (e.g. tune on [:500], report on [500:])")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--baseline", action="store_true", help="measure presidio's defaults only")
    args = parser.parse_args()

    samples = json.loads(args.data.read_text())[args.offset :]
    samples = samples[: args.limit] if args.limit is not None else samples
    policy = PIIPolicy()

    baseline = PresidioDefaults()
    measure(baseline, samples[:8], policy)  # warm-up: spaCy's first batch is slow
    base, base_counts = measure(baseline, samples, policy)
    print(json.dumps({"presidio_defaults": base_counts}), file=sys.stderr)
    if args.baseline:
        print(json.dumps({"n_texts": len(samples), **base}))
        return

    from keel.ingestion.pii import PIIScrubber

    keel = PIIScrubber()
    measure(keel, samples[:8], policy)
    ours, counts = measure(keel, samples, policy)
    print(json.dumps({"keel": counts}), file=sys.stderr)
    print(
        json.dumps(
            {
                "n_texts": len(samples),
                **ours,
                "presidio_defaults": base,
                "speed_ratio": round(ours["texts_per_s"] / base["texts_per_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
