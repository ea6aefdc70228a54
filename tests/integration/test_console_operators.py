from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.console.passwords import verify_password
from loyalty.console.service import create_operator
from loyalty.errors import Conflict, InvalidInput
from tests.support import make_programme


async def test_create_operator_stores_an_argon2_hash_and_the_role(engine: AsyncEngine) -> None:
    programme = await make_programme(engine)
    async with engine.begin() as conn:
        operator_id = await create_operator(
            conn,
            email=" Ann@Example.INVALID ",
            programme_code=programme.code,
            role="support",
            password="correct horse battery",
        )
        row = (
            await conn.execute(
                text(
                    "SELECT o.email, o.password_hash, p.role FROM operators o"
                    " JOIN operator_programmes p ON p.operator_id = o.id WHERE o.id = :i"
                ),
                {"i": operator_id},
            )
        ).one()
        assert row.email == "ann@example.invalid"
        assert row.role == "support"
        assert row.password_hash.startswith("$argon2id$")
        assert verify_password(row.password_hash, "correct horse battery")
        assert not verify_password(row.password_hash, "wrong horse battery")
        with pytest.raises(Conflict):
            await create_operator(
                conn,
                email="ann@example.invalid",
                programme_code=programme.code,
                role="admin",
                password="another long one",
            )
        with pytest.raises(InvalidInput):
            await create_operator(
                conn,
                email="bob@example.invalid",
                programme_code=programme.code,
                role="owner",
                password="another long one",
            )


def test_an_unknown_email_never_verifies() -> None:
    assert not verify_password(None, "anything at all")
