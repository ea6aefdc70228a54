"""Tables of the points ledger. The chart of accounts is described in docs/ledger.md.

Hot tables (balances, entries, lots) carry no foreign keys: a foreign-key check takes a share
lock on the referenced row, which serialises every writer of a hot account. Their integrity is
checked by ``loyalty ledger verify`` instead, and by CHECK constraints on each row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from loyalty.db import Base

ACCOUNT_KINDS = ("funding", "budget", "member", "redemption", "breakage", "adjustments")
BUCKET_AVAILABLE, BUCKET_PENDING, BUCKET_HELD = 0, 1, 2


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(f"kind IN {ACCOUNT_KINDS!r}", name="kind"),
        CheckConstraint("shards BETWEEN 1 AND 256", name="shards"),
        Index(
            "uq_accounts_system",
            "programme_id",
            "kind",
            unique=True,
            postgresql_where=text("kind IN ('funding', 'redemption', 'breakage', 'adjustments')"),
        ),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    # A hot account's balance is split over several rows so concurrent writers rarely meet.
    shards: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AccountBalance(Base):
    """One balance row per account shard; three buckets per row (see docs/ledger.md)."""

    __tablename__ = "account_balances"
    __table_args__ = (
        CheckConstraint("floor IS NULL OR available >= floor", name="floor"),
        CheckConstraint("pending >= 0", name="pending_nonneg"),
        CheckConstraint("held >= 0", name="held_nonneg"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    available: Mapped[int] = mapped_column(BigInteger, server_default="0")
    pending: Mapped[int] = mapped_column(BigInteger, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # NULL: no floor (funding and sink accounts, members under the 'negative' clawback policy).
    floor: Mapped[int | None] = mapped_column(BigInteger)


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("programme_id", "code"),
        CheckConstraint("cap >= 0", name="cap_nonneg"),
        CheckConstraint("unit_cost_micros >= 0", name="unit_cost_nonneg"),
        CheckConstraint("per_member_cap IS NULL OR per_member_cap > 0", name="per_member_cap_pos"),
        CheckConstraint("status IN ('active', 'closed')", name="status"),
    )

    programme_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, server_default="")
    account_id: Mapped[int] = mapped_column(BigInteger)
    # Points allocated to the budget so far (creation, top-ups, moves in minus moves out).
    cap: Mapped[int] = mapped_column(BigInteger)
    unit_cost_micros: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    per_member_cap: Mapped[int | None] = mapped_column(BigInteger)
    alert_thresholds: Mapped[list[int]] = mapped_column(ARRAY(Integer), server_default="{}")
    alerts_sent: Mapped[list[int]] = mapped_column(ARRAY(Integer), server_default="{}")
    status: Mapped[str] = mapped_column(Text, server_default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BudgetMemberUsage(Base):
    """Points a budget has issued to one member, kept only for budgets with a per-member cap."""

    __tablename__ = "budget_member_usage"
    __table_args__ = (CheckConstraint("issued >= 0", name="issued_nonneg"),)

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    budget_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    issued: Mapped[int] = mapped_column(BigInteger)


class LedgerTransaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        Index(
            "ix_transactions_member",
            "programme_id",
            "member_id",
            "id",
            postgresql_where=text("member_id IS NOT NULL"),
        ),
        Index(
            "ix_transactions_counterparty",
            "programme_id",
            "counterparty_id",
            postgresql_where=text("counterparty_id IS NOT NULL"),
        ),
        Index(
            "ix_transactions_reference",
            "programme_id",
            "reference",
            postgresql_where=text("reference IS NOT NULL"),
        ),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    member_id: Mapped[int | None] = mapped_column(BigInteger)
    counterparty_id: Mapped[int | None] = mapped_column(BigInteger)
    budget_id: Mapped[int | None] = mapped_column(BigInteger)
    hold_id: Mapped[int | None] = mapped_column(BigInteger)
    reverses_id: Mapped[int | None] = mapped_column(BigInteger)
    reference: Mapped[str | None] = mapped_column(Text)
    # The headline amount as the member sees it (signed: + credit, - debit of the member).
    amount: Mapped[int] = mapped_column(BigInteger)
    # Money value of the points moved, in millionths of the programme currency.
    cost_micros: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reason: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    actor: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Entry(Base):
    """One leg of a transaction: a signed amount on one bucket of one account shard."""

    __tablename__ = "entries"
    __table_args__ = (
        CheckConstraint("bucket IN (0, 1, 2)", name="bucket"),
        CheckConstraint("amount <> 0", name="amount_nonzero"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    txn_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    shard: Mapped[int] = mapped_column(SmallInteger)
    bucket: Mapped[int] = mapped_column(SmallInteger)
    amount: Mapped[int] = mapped_column(BigInteger)


class Lot(Base):
    """Points a member received in one go, with their own expiry and unit cost."""

    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_pos"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_range"),
        CheckConstraint("clawed >= 0 AND clawed <= amount", name="clawed_range"),
        Index(
            "ix_lots_spend_order",
            "programme_id",
            "member_id",
            "expires_at",
            "id",
            postgresql_where=text("remaining > 0 AND vested"),
        ),
        # Only lots that can expire: most programmes have many lots that never do.
        Index(
            "ix_lots_expiry", "expires_at", postgresql_where=text("remaining > 0 AND expires_at IS NOT NULL")
        ),
        Index("ix_lots_vesting", "vests_at", postgresql_where=text("NOT vested")),
        Index("ix_lots_txn", "programme_id", "txn_id"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    txn_id: Mapped[int] = mapped_column(BigInteger)
    budget_id: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    clawed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    unit_cost_micros: Mapped[int] = mapped_column(BigInteger, server_default="0")
    vested: Mapped[bool] = mapped_column(Boolean)
    vests_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LotMovement(Base):
    """How much of which lot a transaction took (positive) or gave back (negative)."""

    __tablename__ = "lot_movements"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        Index(
            "ix_lot_movements_hold", "programme_id", "hold_id", postgresql_where=text("hold_id IS NOT NULL")
        ),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    txn_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # One transaction may touch a lot twice (a hold's release, then a debt paid off from it).
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    lot_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    hold_id: Mapped[int | None] = mapped_column(BigInteger)


class Hold(Base):
    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_pos"),
        CheckConstraint("captured >= 0 AND captured <= amount", name="captured_range"),
        CheckConstraint("status IN ('open', 'captured', 'voided', 'expired')", name="status"),
        Index("ix_holds_timeout", "expires_at", postgresql_where=text("status = 'open'")),
        Index("ix_holds_member", "programme_id", "member_id"),
    )

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    txn_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    captured: Mapped[int] = mapped_column(BigInteger, server_default="0")
    status: Mapped[str] = mapped_column(Text, server_default="open")
    reference: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """A client's Idempotency-Key: claimed at the start of a write, answered with its stored response."""

    __tablename__ = "idempotency_keys"

    programme_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary)
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
