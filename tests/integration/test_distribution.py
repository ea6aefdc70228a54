"""The pieces of the Citus layout that a single PostgreSQL also carries (docs/scaling.md)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import distribution, sql_files

# Member ids as the API admits them: printable text, no NUL.
external_ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=64
)


@settings(max_examples=60, deadline=None)
@given(programme=st.integers(min_value=1, max_value=2**62), external=external_ids)
async def test_python_names_the_same_member_key_as_the_database(
    engine: AsyncEngine, programme: int, external: str
) -> None:
    async with engine.connect() as conn:
        sql = await conn.scalar(text("SELECT loyalty_member_key(:p, :e)"), {"p": programme, "e": external})
    key = distribution.member_key(programme, external)
    assert key == sql
    assert 0 <= key < 2**63


def test_the_key_depends_on_the_programme_and_the_id() -> None:
    assert distribution.member_key(1, "alice") != distribution.member_key(2, "alice")
    assert distribution.member_key(1, "alice") != distribution.member_key(1, "alicf")
    assert distribution.member_key(1, "12/3") != distribution.member_key(11, "2/3")


def test_only_delegated_postings_get_a_key_and_only_on_citus(monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"p_programme": 7, "p_member": "m-1", "p_amount": 5}
    assert distribution.route("ledger_earn", params) == params
    monkeypatch.setattr(distribution.Layout, "citus", True)
    routed = distribution.route("ledger_earn", params)
    assert routed == {**params, "p_member_key": distribution.member_key(7, "m-1")}
    assert distribution.route("ledger_capture", {"p_programme": 7, "p_hold": 3}) == {
        "p_programme": 7,
        "p_hold": 3,
    }


def test_a_file_runs_unchanged_without_citus_and_in_its_citus_form_on_citus() -> None:
    sql = "SELECT 1; --@plain\n--citus: SELECT 2;\n    --citus:   AND x = 1\nSELECT 3;\n"
    assert sql_files.citus_form(sql) == "SELECT 2;\n      AND x = 1\nSELECT 3;\n"
    # Without Citus the markers are comments: a plain-only line still ends its statement.
    assert sql_files.statements(sql) == ["SELECT 1; --@plain", "SELECT 3;"]
    plain = {f.path: f.sql for f in sql_files.load()}
    citus = {f.path: f.sql for f in sql_files.load(citus=True)}
    assert plain.keys() == citus.keys()
    for path, text_ in plain.items():
        assert sql_files.CITUS_LINE not in citus[path]
        assert (sql_files.CITUS_LINE in text_ or sql_files.PLAIN_ONLY in text_) == (citus[path] != text_)
