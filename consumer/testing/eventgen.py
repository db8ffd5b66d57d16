"""Realistic product-usage events (and a few malformed records) for the demo, tests and benchmarks.

Deterministic for a given seed, so a run can be reproduced and asserted on.
"""

from __future__ import annotations

import random
import struct
import uuid
from collections.abc import Iterator
from typing import Any

EVENT_TYPES = ("feature_used", "module_ended", "session_synced", "user_identified", "account_identified",
               "page_viewed")
WEIGHTS = (60, 12, 10, 4, 2, 12)
FEATURES = ("export_csv", "share_link", "create_report", "invite_user", "bulk_edit", "search", "dashboard_filter")
MODULES = ("reports", "dashboards", "admin", "editor", "inbox")
PRODUCTS = ("analytics", "crm")
PLANS = ("free", "starter", "pro", "enterprise")
ROLES = ("admin", "member", "viewer")
BASE_TIME_MS = 1_763_900_000_000


def make_event(rng: random.Random, index: int, event_type: str | None = None) -> dict[str, Any]:
    """One event of ``event_type`` (random by weight when None) with the fields that type carries."""
    kind = event_type or rng.choices(EVENT_TYPES, WEIGHTS)[0]
    account = rng.randrange(200)
    user = account * 50 + rng.randrange(50)
    event: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "event_type": kind,
        "occurred_at": BASE_TIME_MS + index * 37 + rng.randrange(1000),
        "account_id": f"acct-{account:04d}",
        "user_id": f"user-{user:06d}@example.com",
        "session_id": f"sess-{user:06d}-{index // 500}",
        "device_id": f"dev-{rng.getrandbits(48):012x}" if rng.random() < 0.8 else None,
        "product": rng.choice(PRODUCTS),
        "module": rng.choice(MODULES),
        "feature": None,
        "duration_ms": None,
        "count": None,
        "user": None,
        "account": None,
        "properties": {},
    }
    if kind == "feature_used":
        event["feature"] = rng.choice(FEATURES)
        event["count"] = rng.choice((None, 1, 1, 2, 5))
        event["properties"] = {"plan": rng.choice(PLANS), "browser": rng.choice(("chrome", "firefox", "safari"))}
    elif kind in ("module_ended", "session_synced"):
        event["duration_ms"] = rng.randrange(1_000, 1_800_000)
    elif kind == "user_identified":
        event["user"] = {"email": event["user_id"], "name": f"User {user}", "role": rng.choice(ROLES),
                         "created_at": BASE_TIME_MS - rng.randrange(10**10), "attributes": {"locale": "en-GB"}}
    elif kind == "account_identified":
        event["account"] = {"name": f"Account {account}", "plan": rng.choice(PLANS),
                            "mrr": round(rng.uniform(0, 5000), 2),
                            "created_at": BASE_TIME_MS - rng.randrange(10**11), "attributes": {"region": "emea"}}
    elif kind == "page_viewed":
        event["properties"] = {"path": f"/{rng.choice(MODULES)}/{rng.randrange(100)}", "referrer": "direct"}
    return event


def realistic_events(count: int, *, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for index in range(count):
        yield make_event(rng, index)


def one_of_each(*, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_event(rng, i, kind) for i, kind in enumerate(EVENT_TYPES)]


def malformed_values(schema_id: int, valid_value: bytes) -> list[tuple[str, bytes]]:
    """(expected dead-letter reason, value) pairs: records that must be dead-lettered, never delivered.

    ``schema_id`` is a registered id and ``valid_value`` a well-formed Confluent-framed event.
    """
    header = b"\x00" + struct.pack(">I", schema_id)
    return [
        ("undecodable", header + b"\xff\xff\xff"),                 # a known schema id, a garbage body
        ("undecodable", b"not avro at all"),                        # wrong magic byte
        ("undecodable", valid_value[: len(valid_value) // 2]),     # a real event cut in half
        ("unknown_schema", b"\x00" + struct.pack(">I", 999_999) + valid_value[5:]),  # nobody knows this id
    ]


# ------------------------------------------------------------------------------------------------------------
# Records of other streams: the example schemas in examples/streams/ (page_view.avsc, product_viewed.avsc,
# purchase.avsc), written by the same users and accounts as the UsageEvents above (acct-NNNN, user-NNNNNN@...).

PAGE_VIEW_NAME = "com.example.web.PageView"
PRODUCT_VIEWED_NAME = "com.example.shop.ProductViewed"
PURCHASE_NAME = "com.example.shop.Purchase"

APP_SECTIONS = MODULES
"""Sections of the web app (signed-in pages): the product's modules."""
SITE_SECTIONS = ("home", "pricing", "docs", "blog", "customers")
"""Sections of the marketing site (mostly anonymous visitors)."""
REFERRERS = (None, None, None, "https://www.google.com/", "https://www.bing.com/", "https://www.linkedin.com/",
             "https://news.ycombinator.com/", "https://mail.example.com/")
CAMPAIGNS = (("newsletter", "email", "spring-launch"), ("linkedin", "social", "webinar-q2"),
             ("google", "cpc", "brand-search"), ("partner", "referral", "integrations"))
DEVICES = ("DESKTOP", "MOBILE", "TABLET")
DEVICE_WEIGHTS = (70, 25, 5)
CATALOG = (
    # sku, name, category (enum symbol), list price in cents
    ("SEAT-PRO", "Pro seat (monthly)", "SEATS", 4_900),
    ("SEAT-ENT", "Enterprise seat (monthly)", "SEATS", 9_900),
    ("ADD-SSO", "Single sign-on add-on", "ADDON", 20_000),
    ("ADD-AUDIT", "Audit log add-on", "ADDON", 15_000),
    ("ADD-API", "API access add-on", "ADDON", 10_000),
    ("SUP-PRIORITY", "Priority support", "SUPPORT", 50_000),
    ("SUP-TAM", "Technical account manager", "SUPPORT", 250_000),
    ("TRN-ONBOARD", "Onboarding workshop", "TRAINING", 120_000),
    ("TRN-ADMIN", "Admin training (per seat)", "TRAINING", 30_000),
)
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_WEIGHTS = (60, 25, 15)
COUPONS = {"SPRING10": 10, "PARTNER15": 15, "WELCOME5": 5}
"""Coupon code: percent off the order."""


def _shopper(rng: random.Random) -> tuple[int, int]:
    """(account, user) numbers of the same population as :func:`make_event`'s."""
    account = rng.randrange(200)
    return account, account * 50 + rng.randrange(50)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_page_view(rng: random.Random, index: int, *, signed_in: bool | None = None) -> dict[str, Any]:
    """One ``com.example.web.PageView``: a signed-in user on an app page (about 70%, or as ``signed_in`` says)
    or an anonymous visitor, mostly on the marketing site."""
    signed = rng.random() < 0.7 if signed_in is None else signed_in
    account, user = _shopper(rng)
    if signed:
        section = rng.choice(APP_SECTIONS) if rng.random() < 0.85 else rng.choice(SITE_SECTIONS)
        visitor: dict[str, str | None] = {"anonymous_id": f"anon-{(user * 2_654_435_761) % 2**48:012x}",
                   "user_id": f"user-{user:06d}@example.com", "account_id": f"acct-{account:04d}"}
        session: str | None = f"sess-{user:06d}-{index // 500}"
    else:
        section = rng.choice(SITE_SECTIONS) if rng.random() < 0.9 else rng.choice(APP_SECTIONS)
        visitor = {"anonymous_id": f"anon-{rng.getrandbits(48):012x}", "user_id": None, "account_id": None}
        session = f"web-{rng.getrandbits(40):010x}" if rng.random() < 0.9 else None
    page_number = rng.randrange(1, 120)
    path = "/" if section == "home" else f"/{section}/{page_number}"
    utm: dict[str, str] = {}
    if rng.random() < 0.25:
        source, medium, campaign = rng.choice(CAMPAIGNS)
        utm = {"utm_source": source, "utm_medium": medium, "utm_campaign": campaign}
    return {
        "event_id": _uuid(rng),
        "occurred_at": BASE_TIME_MS + index * 41 + rng.randrange(1000),
        "session_id": session,
        "visitor": visitor,
        "page": {"path": path, "section": section,
                 "title": f"{section.capitalize()} #{page_number}" if rng.random() < 0.9 else None,
                 "referrer": rng.choice(REFERRERS)},
        "device": rng.choices(DEVICES, DEVICE_WEIGHTS)[0],
        "engaged_ms": min(int(rng.lognormvariate(9.6, 1.1)), 1_800_000),
        "utm": utm,
    }


def page_views(count: int, *, seed: int = 17) -> Iterator[dict[str, Any]]:
    """``count`` page views for the ``web`` example stream (examples/streams/page_view.avsc)."""
    rng = random.Random(seed)
    for index in range(count):
        yield make_page_view(rng, index)


def _shop_base(rng: random.Random, index: int) -> dict[str, Any]:
    account, user = _shopper(rng)
    return {"event_id": _uuid(rng), "occurred_at": BASE_TIME_MS + index * 53 + rng.randrange(1000),
            "account_id": f"acct-{account:04d}", "user_id": f"user-{user:06d}@example.com",
            "session_id": f"sess-{user:06d}-{index // 500}" if rng.random() < 0.9 else None}


def make_product_view(rng: random.Random, index: int) -> dict[str, Any]:
    """One ``com.example.shop.ProductViewed`` (examples/streams/product_viewed.avsc)."""
    event = _shop_base(rng, index)
    sku, name, category, price = rng.choice(CATALOG)
    event["product"] = {"sku": sku, "name": name, "category": category, "price_cents": price}
    event["list_position"] = rng.randrange(1, 13) if rng.random() < 0.6 else None
    return event


def make_purchase(rng: random.Random, index: int) -> dict[str, Any]:
    """One ``com.example.shop.Purchase`` (examples/streams/purchase.avsc): one to three catalogue lines."""
    event = _shop_base(rng, index)
    lines = rng.sample(CATALOG, rng.choice((1, 1, 1, 2, 2, 3)))
    items: list[dict[str, Any]] = [
        {"sku": sku, "quantity": rng.randrange(1, 26) if category == "SEATS" else 1, "unit_price_cents": price}
        for sku, _, category, price in lines]
    total = sum(item["quantity"] * item["unit_price_cents"] for item in items)
    coupon = rng.choice(tuple(COUPONS)) if rng.random() < 0.15 else None
    if coupon is not None:
        total = total * (100 - COUPONS[coupon]) // 100
    event.update({"order_id": f"ord-{index:06d}-{rng.getrandbits(24):06x}",
                  "currency": rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0], "total_cents": total,
                  "items": items, "coupon": coupon})
    return event


def shop_events(count: int, *, seed: int = 23, purchase_share: float = 0.2) -> Iterator[tuple[str, dict[str, Any]]]:
    """``count`` (record full name, record) pairs for the shop topic of the example streams: product views and,
    about ``purchase_share`` of them, purchases, interleaved as one shop would write them."""
    rng = random.Random(seed)
    for index in range(count):
        if rng.random() < purchase_share:
            yield PURCHASE_NAME, make_purchase(rng, index)
        else:
            yield PRODUCT_VIEWED_NAME, make_product_view(rng, index)
