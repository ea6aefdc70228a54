"""The pure parts of imports: a body split into CSV records whatever its chunking, the header
check, and the row checks with the API's own messages."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.errors import InvalidInput
from loyalty.imports import core

CELL = st.text(alphabet=st.sampled_from(["a", "b", " ", ",", '"', "\n", "é"]), max_size=6)


def split(body: bytes, sizes: list[int]) -> list[core.Record]:
    splitter = core.RecordSplitter()
    records: list[core.Record] = []
    position = 0
    for size in sizes:
        records += splitter.feed(body[position : position + size])
        position += size
    records += splitter.feed(body[position:], final=True)
    return records


@given(
    rows=st.lists(st.lists(CELL, min_size=1, max_size=4), min_size=1, max_size=12),
    sizes=st.lists(st.integers(min_value=1, max_value=9), max_size=40),
)
def test_any_chunking_gives_the_records_csv_reads(rows: list[list[str]], sizes: list[int]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    body = out.getvalue().encode()
    expected = [
        r for r in csv.reader(io.StringIO(out.getvalue(), newline="")) if r and any(c.strip() for c in r)
    ]
    assert [r.cells for r in split(body, sizes)] == expected


def test_line_numbers_count_physical_lines() -> None:
    body = b'member_id,attributes.note\nm-1,"two\nlines"\n\nm-2,x\n'
    records = split(body, [3, 5, 7])
    assert [(r.line, r.cells[0]) for r in records] == [(1, "member_id"), (2, "m-1"), (5, "m-2")]


def test_a_byte_order_mark_and_bad_bytes() -> None:
    assert split("\ufeffmember_id\nm-1\n".encode(), [2])[0].cells == ["member_id"]
    with pytest.raises(InvalidInput) as raised:
        split(b"member_id\n\xff\n", [20])
    assert raised.value.field == "body"


def test_header_names_every_unknown_missing_and_repeated_column() -> None:
    assert core.check_header("members", [" member_id ", "attributes.city", "tags"]) == [
        "member_id",
        "attributes.city",
        "tags",
    ]
    with pytest.raises(InvalidInput) as raised:
        core.check_header("points", ["member_id", "points", "points", "colour"])
    fields = [e["field"] for e in raised.value.extra["errors"]]
    assert fields == ["header.colour", "header.points", "header.reference"]


def test_rows_fail_with_the_apis_messages() -> None:
    header = ["member_id", "points", "reference"]
    assert core.parse_points(header, ["m", "0", "r"], "base") == core.Rejected(
        "points", "Expected `int` >= 1"
    )
    assert core.parse_points(header, ["m", "x", "r"], "base").field == "points"  # type: ignore[union-attr]
    assert core.parse_points(header, ["m", "5", ""], "base") == core.Rejected("reference", "is required")
    row = core.parse_points(header, ["m", "5", "r-1"], "base")
    assert isinstance(row, core.PointsRow) and row.key == "import:r-1" and row.points == 5
    assert core.parse_member(["member_id", "status"], ["m", "gone"]).field == "status"  # type: ignore[union-attr]
    member = core.parse_member(["member_id", "attributes", "tags"], ["m", '{"a": 1}', "x; y;x"])
    assert member == core.MemberRow("m", {"a": 1, "tags": ["x", "y"]}, None)


def test_progress_reaches_100_only_when_every_row_is_done() -> None:
    assert core.progress_percent(999, 1000) == 99
    assert core.progress_percent(1000, 1000) == 100
    assert core.progress_percent(0, 0) == 100
