"""Search attributes every ``AnswerQuestion`` run carries, so operators can filter runs in the
Temporal UI (``KeelTenant = 'acme' AND KeelCostUSD > 0.01``). A run waiting for a human
(:func:`keel.approval`) carries ``KeelApproval = 'pending'`` (``'decided'`` once every approval
of the run is decided) and, when its request names one, ``KeelTenant``.

``keel up`` registers them with the dev server; on a cluster, register them once with
``temporal operator search-attribute create --name KeelTenant --type Keyword`` (and so on).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

KEEL_TENANT = SearchAttributeKey.for_keyword("KeelTenant")
KEEL_MODEL = SearchAttributeKey.for_keyword("KeelModel")  # the model that answered
KEEL_COST_USD = SearchAttributeKey.for_float("KeelCostUSD")  # every attempt, failed ones too
KEEL_TOKENS = SearchAttributeKey.for_int("KeelTokens")
KEEL_CACHE = SearchAttributeKey.for_keyword("KeelCache")  # "exact", "semantic" or "miss"
KEEL_APPROVAL = SearchAttributeKey.for_keyword("KeelApproval")  # "pending" or "decided"
KEEL_INJECTION = SearchAttributeKey.for_keyword("KeelInjection")  # "flagged": instructions found in sources or question

# Name -> type, as `temporal server start-dev --search-attribute NAME=TYPE` expects them.
SEARCH_ATTRIBUTES = {
    KEEL_TENANT.name: "Keyword",
    KEEL_MODEL.name: "Keyword",
    KEEL_COST_USD.name: "Double",
    KEEL_TOKENS.name: "Int",
    KEEL_CACHE.name: "Keyword",
    KEEL_APPROVAL.name: "Keyword",
    KEEL_INJECTION.name: "Keyword",
}
