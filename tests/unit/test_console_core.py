from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loyalty.console import core

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = core.LockoutPolicy(max_failures=5, lockout=timedelta(minutes=15))


@pytest.mark.parametrize(
    ("role", "permission", "allowed"),
    [
        ("analyst", "read", True),
        ("analyst", "export", True),
        ("analyst", "member.adjust", False),
        ("support", "member.adjust", True),
        ("support", "rules", False),
        ("marketer", "budgets", True),
        ("marketer", "member.void_hold", False),
        ("marketer", "operators", False),
        ("admin", "operators", True),
        ("admin", "member.adjust", True),
        ("nobody", "read", False),
    ],
)
def test_permission_map(role: str, permission: str, allowed: bool) -> None:
    assert core.may(role, permission) is allowed


def test_admin_holds_every_permission_and_unknown_ones_are_an_error() -> None:
    assert core.PERMISSIONS["admin"] == core.ALL_PERMISSIONS
    with pytest.raises(ValueError):
        core.may("admin", "delete-everything")


def test_csrf_token_is_bound_to_the_session_and_secret() -> None:
    token = core.csrf_token("session-a", secret="s")
    assert core.csrf_ok(token, "session-a", secret="s")
    assert not core.csrf_ok(token, "session-b", secret="s")
    assert not core.csrf_ok(token, "session-a", secret="other")
    assert not core.csrf_ok(None, "session-a", secret="s")
    assert not core.csrf_ok("", "session-a", secret="s")


def test_fifth_failure_locks_for_fifteen_minutes() -> None:
    counter = core.LoginCounter(failures=0, locked_until=None)
    for _ in range(4):
        counter = core.after_failure(counter, NOW, POLICY)
        assert not core.locked(counter, NOW)
    counter = core.after_failure(counter, NOW, POLICY)
    assert counter.failures == 5
    assert core.locked(counter, NOW + timedelta(minutes=14, seconds=59))
    assert not core.locked(counter, NOW + timedelta(minutes=15))


def test_a_failure_after_the_lock_ran_out_counts_from_one() -> None:
    counter = core.LoginCounter(failures=5, locked_until=NOW)
    later = core.after_failure(counter, NOW + timedelta(seconds=1), POLICY)
    assert later.failures == 1
    assert not core.locked(later, NOW + timedelta(seconds=1))


def test_idle_expiry() -> None:
    assert not core.idle_expired(NOW, NOW + timedelta(minutes=29), timedelta(minutes=30))
    assert core.idle_expired(NOW, NOW + timedelta(minutes=30), timedelta(minutes=30))


def test_an_operator_principal_is_named_as_the_operator() -> None:
    from loyalty.http.principal import Principal

    who = Principal(programme_id=1, programme_code="p", role="operator", operator_id=7)
    assert who.actor == "operator:7"
    assert Principal(programme_id=1, programme_code="p", role="operator", key_id=3).actor == "key:3:operator"
