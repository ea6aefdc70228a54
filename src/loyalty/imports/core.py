"""Pure import logic, no I/O: the columns each kind of file has, splitting a streamed body into
CSV records, and turning one record into a checked row or the reason it is refused. The checks
are the API's own (the same msgspec types), so a row fails with the message the API gives."""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from loyalty import decoding
from loyalty.errors import InvalidInput
from loyalty.imports.schemas import MemberRowIn
from loyalty.ledger import core as ledger_core
from loyalty.ledger.schemas import EarnRequest

Kind = Literal["members", "points"]

REQUIRED: dict[str, tuple[str, ...]] = {
    "members": ("member_id",),
    "points": ("member_id", "points", "reference"),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "members": ("status", "attributes", "tags"),
    "points": ("reason",),
}
# members: one column per attribute, e.g. "attributes.city" (its cell is a string).
ATTRIBUTE_PREFIX = "attributes."
TAG_SEPARATOR = ";"
MAX_COLUMNS = 80


def check_header(kind: Kind, header: list[str]) -> list[str]:
    """The header's column names, trimmed; a 400 naming every unknown, missing or repeated one."""
    names = [name.strip() for name in header]
    known = set(REQUIRED[kind]) | set(OPTIONAL[kind])
    errors: list[dict[str, str]] = []
    expected = ", ".join(
        [*REQUIRED[kind], *OPTIONAL[kind]] + ([f"{ATTRIBUTE_PREFIX}<key>"] if kind == "members" else [])
    )
    if len(names) > MAX_COLUMNS:
        errors.append({"field": "header", "reason": f"at most {MAX_COLUMNS} columns"})
    for name in names:
        attribute = (
            kind == "members" and name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX)
        )
        if name not in known and not attribute:
            errors.append({"field": f"header.{name}", "reason": f"unknown column (expected: {expected})"})
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append({"field": f"header.{name}", "reason": "the column appears more than once"})
    for name in REQUIRED[kind]:
        if name not in names:
            errors.append({"field": f"header.{name}", "reason": "missing required column"})
    if errors:
        first = errors[0]
        error = InvalidInput(first["field"], first["reason"])
        error.extra["errors"] = errors
        raise error
    return names


# --- streaming the body -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    line: int  # the record's first line in the file (the header is line 1)
    cells: list[str]


class RecordSplitter:
    """Turns a body that arrives in chunks into CSV records, holding at most one chunk and one
    unfinished record. A record ends at a newline outside quotes: RFC 4180 doubles a quote
    inside a quoted field, so a newline is outside quotes when the quotes before it are even."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._tail = ""
        self._lines = 0  # physical lines handed to the csv reader so far

    def feed(self, data: bytes, *, final: bool = False) -> list[Record]:
        try:
            text = self._tail + self._decoder.decode(data, final)
        except UnicodeDecodeError:
            raise InvalidInput("body", "is not UTF-8 text") from None
        if "\x00" in text:
            raise InvalidInput("body", "must not contain a NUL character")
        # Rescans only the unfinished record carried over from the last chunk.
        quotes = 0
        cut = 0
        position = 0
        while (newline := text.find("\n", position)) >= 0:
            quotes += text.count('"', position, newline + 1)
            position = newline + 1
            if quotes % 2 == 0:
                cut = position
        if final:
            cut = len(text)
        complete, self._tail = text[:cut], text[cut:]
        return self._parse(complete) if complete else []

    def _parse(self, text: str) -> list[Record]:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        records: list[Record] = []
        base = self._lines
        before = 0
        try:
            for cells in reader:
                line = base + before + 1
                before = reader.line_num
                if cells and any(cell.strip() for cell in cells):
                    records.append(Record(line, cells))
        except csv.Error as exc:
            raise InvalidInput(f"line {base + before + 1}", f"is not valid CSV: {exc}") from None
        self._lines = base + reader.line_num
        return records


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    field: str
    reason: str
    code: str = "invalid_input"


@dataclass(frozen=True, slots=True)
class MemberRow:
    member_id: str
    attributes: dict[str, Any]
    status: str | None


@dataclass(frozen=True, slots=True)
class PointsRow:
    member_id: str
    points: int
    reference: str
    reason: str | None
    key: str
    fingerprint: bytes


def _rejected(failure: decoding.DecodeFailure) -> Rejected:
    """The field and reason of a row that does not convert, as the API names them."""
    error = failure.error
    if error.kind == "missing":
        return Rejected(error.path, "is required")
    return Rejected(error.path.split(".")[0] or "row", error.reason)


def _cells(header: list[str], cells: list[str]) -> dict[str, str] | Rejected:
    if len(cells) != len(header):
        return Rejected("row", f"has {len(cells)} fields; the header has {len(header)}")
    # An empty cell is an absent value: the column's default, or no change to the member.
    return {name: cell.strip() for name, cell in zip(header, cells, strict=True) if cell.strip()}


def parse_member(header: list[str], cells: list[str]) -> MemberRow | Rejected:
    values = _cells(header, cells)
    if isinstance(values, Rejected):
        return values
    attributes: dict[str, Any] = {}
    if "attributes" in values:
        try:
            decoded = msgspec.json.decode(values["attributes"])
        except msgspec.DecodeError:
            return Rejected("attributes", 'must be a JSON object, e.g. {"city": "Lyon"}')
        if not isinstance(decoded, dict):
            return Rejected("attributes", 'must be a JSON object, e.g. {"city": "Lyon"}')
        attributes.update(decoded)
    for name, value in values.items():
        if name.startswith(ATTRIBUTE_PREFIX):
            attributes[name[len(ATTRIBUTE_PREFIX) :]] = value
    if "tags" in values:
        attributes["tags"] = sorted({t.strip() for t in values["tags"].split(TAG_SEPARATOR) if t.strip()})
    body: dict[str, Any] = {"member_id": values.get("member_id"), "attributes": attributes}
    if "status" in values:
        body["status"] = values["status"]
    body = {k: v for k, v in body.items() if v is not None}
    try:
        row = decoding.convert(body, MemberRowIn)
    except decoding.DecodeFailure as exc:
        return _rejected(exc)
    return MemberRow(row.member_id, row.attributes, row.status)


def points_key(reference: str) -> str:
    """A points row's idempotency key, per programme: the same reference is granted once."""
    return f"import:{reference}"


def parse_points(header: list[str], cells: list[str], budget: str) -> PointsRow | Rejected:
    values = _cells(header, cells)
    if isinstance(values, Rejected):
        return values
    if "reference" not in values:
        # Optional in the API, required here: it is what keeps a retried file from granting twice.
        return Rejected("reference", "is required")
    body: dict[str, Any] = {"budget": budget, **values}
    try:
        # strict=False: a CSV cell is text, "120" is the number 120 (and "12.5" is refused).
        request = decoding.convert(body, EarnRequest, strict=False)
    except decoding.DecodeFailure as exc:
        return _rejected(exc)
    try:
        ledger_core.check_points("points", request.points)
    except InvalidInput as exc:
        return Rejected(exc.field, exc.reason)
    reference = request.reference or ""  # never empty: checked above
    return PointsRow(
        member_id=request.member_id,
        points=request.points,
        reference=reference,
        reason=request.reason,
        key=points_key(reference),
        fingerprint=ledger_core.fingerprint("earn", request),
    )


# The field a ledger refusal is about, for the error report.
LEDGER_FIELDS = {
    "member_not_found": "member_id",
    "member_not_active": "member_id",
    "member_exists": "member_id",
    "budget_not_found": "budget",
    "budget_closed": "budget",
    "budget_not_active": "budget",
    "budget_exhausted": "points",
    "member_cap_reached": "points",
    "idempotency_key_reused": "reference",
}
# The API's sentence for a replayed key speaks of the Idempotency-Key header; a file has none.
REASON_OVERRIDES = {
    "idempotency_key_reused": "was already imported with another member, number of points or reason",
    "member_exists": "was enrolled at the same time by another request; import the row again",
}


def progress_percent(done: int, total: int) -> int:
    """Whole percent, 100 only once every row is done (never rounded up to it)."""
    if total <= 0:
        return 100
    return min(100, done * 100 // total)
