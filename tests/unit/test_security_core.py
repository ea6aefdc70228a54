"""Pure parts of the security basics: address kinds, CORS origins, rate-limit verdicts, key refs."""

from __future__ import annotations

import pytest

from loyalty.auth.service import parse_key_ref
from loyalty.errors import InvalidInput
from loyalty.http.ratelimit import Limits, verdict
from loyalty.http.security import CorsPolicy
from loyalty.webhooks.targets import TargetPolicy, address_kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fd00::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("192.0.2.10", "private"),  # documentation range
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(address) == kind


def test_a_host_is_refused_if_any_of_its_addresses_is_not_public() -> None:
    policy = TargetPolicy()
    assert policy.refusal("hooks.example", ["93.184.216.34"]) is None
    reason = policy.refusal("hooks.example", ["93.184.216.34", "10.0.0.5"])
    assert reason is not None and "10.0.0.5" in reason and "private" in reason
    assert TargetPolicy(allow_private=True).refusal("hooks.example", ["127.0.0.1"]) is None


def test_cors_origins_match_exactly_and_ignore_case_and_trailing_slash() -> None:
    policy = CorsPolicy(["https://shop.example/", " https://App.Example:8443 "])
    assert policy.allows(b"https://shop.example")
    assert policy.allows(b"https://app.example:8443")
    assert not policy.allows(b"https://shop.example.evil")
    assert not policy.allows(b"http://shop.example")
    assert not policy.allows(b"null")
    assert CorsPolicy(["*"]).allows(b"https://anything.example")


LIMITS = Limits(
    window_seconds=10, per_credential=5, per_ip=8, auth_failures=3, auth_failure_window_seconds=60
)


def test_verdicts_per_credential_per_ip_and_failed_authentications() -> None:
    ok = {"ip_count": 8, "credential_count": 5, "failures": 2, "known_good": False}
    assert verdict(LIMITS, now=1000.0, **ok) is None
    over_key = verdict(LIMITS, now=1003.0, **{**ok, "credential_count": 6})
    assert over_key is not None and over_key.code == "rate_limited" and over_key.retry_after == 7
    over_ip = verdict(LIMITS, now=1009.5, **{**ok, "ip_count": 9})
    assert over_ip is not None and over_ip.code == "rate_limited" and over_ip.retry_after == 1
    locked = verdict(LIMITS, now=1030.0, **{**ok, "failures": 3})
    assert locked is not None and locked.code == "too_many_failed_authentications"
    assert locked.retry_after == 50
    # A credential that authenticated before is not locked out with its address.
    assert verdict(LIMITS, now=1030.0, **{**ok, "failures": 3, "known_good": True}) is None
    off = Limits(per_credential=0, per_ip=0, auth_failures=0)
    assert (
        verdict(off, now=0.0, ip_count=10**9, credential_count=10**9, failures=10**9, known_good=False)
        is None
    )


def test_key_references_are_ids_or_prefixes() -> None:
    assert parse_key_ref("42") == (42, None)
    assert parse_key_ref("lk_AbCdEfG") == (None, "lk_AbCdEfG")
    assert parse_key_ref("lk_AbCdEfGhIjKlMnOp") == (None, "lk_AbCdEfG")
    for bad in ("", "abc", "99999999999999999999999"):
        with pytest.raises(InvalidInput):
            parse_key_ref(bad)
