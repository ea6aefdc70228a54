"""Benefits: the catalogue (create, edit), which tiers include which benefit, campaigns, and who
is entitled to a benefit now, with the count by source, a paginated list and a CSV export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream, Template

from loyalty.benefits import schemas as s
from loyalty.benefits import service as benefits
from loyalty.console.web import (
    NavEntry,
    current,
    errors_of,
    form_data,
    is_htmx,
    needs,
    parse,
    reading,
    render,
    see_other,
    transaction,
    utc_input,
    utc_moment,
)
from loyalty.errors import DomainError, InvalidInput
from loyalty.segments import service as segments
from loyalty.tiers import service as tiers

TYPES = ("flag", "quota", "discount", "multiplier", "gift", "upgrade")
LANGUAGES = ("en", "zh-CN")
# Each type's parameters as form fields (see benefits.core.check_params).
PARAMS: dict[str, tuple[str, ...]] = {
    "flag": (),
    "quota": ("limit", "period"),
    "discount": ("percent", "cap", "amount"),
    "multiplier": ("factor",),
    "gift": ("points", "budget", "period"),
    "upgrade": ("tier",),
}
_TEXT_PARAMS = frozenset({"period", "budget", "tier", "factor"})
FIELDS = (
    "code", "type", "names", "names.en", "names.zh-CN", "descriptions.en", "descriptions.zh-CN",
    "params.limit", "params.period", "params.percent", "params.cap", "params.amount", "params.factor",
    "params.points", "params.budget", "params.tier", "params", "channels", "valid_from", "valid_until",
)  # fmt: skip
CAMPAIGN_FIELDS = ("code", "segment", "benefit", "starts_at", "ends_at")
PAGE = 50
EXPORT_PAGE = 5000


def placed(errors: dict[str, str], fields: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, message in errors.items():
        if key in fields or key == "_form":
            out[key] = message
        else:
            owner = next((f for f in sorted(fields, key=len, reverse=True) if key.startswith(f)), None)
            out[owner or "_form"] = f"{key}: {message}"
    if "names" in out:  # "needs a text in zh-CN": next to the first name input
        out.setdefault("names.en", out.pop("names"))
    return out


def params_of(kind: str, values: dict[str, str]) -> dict[str, Any]:
    """The type's parameters from their fields: numbers as integers, empty fields left out."""
    out: dict[str, Any] = {}
    for name in PARAMS.get(kind, ()):
        raw = values.get(f"params.{name}", "").strip()
        if not raw:
            continue
        if name in _TEXT_PARAMS:
            out[name] = raw
        else:
            try:
                out[name] = int(raw)
            except ValueError:
                out[name] = raw  # the domain says what it expected
    return out


def _texts(values: dict[str, str], name: str) -> dict[str, str]:
    return {
        lang: values[f"{name}.{lang}"].strip()
        for lang in LANGUAGES
        if values.get(f"{name}.{lang}", "").strip()
    }


def _channels(values: dict[str, str]) -> list[str]:
    return [c.strip() for c in values.get("channels", "").split(",") if c.strip()]


def form_of(view: s.BenefitView | None) -> dict[str, str]:
    if view is None:
        return {"type": "flag"}
    out = {
        "code": view.code,
        "type": view.type,
        "channels": ", ".join(view.channels),
        "valid_from": utc_input(view.valid_from),
        "valid_until": utc_input(view.valid_until),
        "active": "on" if view.active else "",
    }
    for lang in LANGUAGES:
        out[f"names.{lang}"] = view.names.get(lang, "")
        out[f"descriptions.{lang}"] = view.descriptions.get(lang, "")
    for name, value in view.params.items():
        out[f"params.{name}"] = str(value)
    return out


async def _tier_codes(request: Request[Any, Any, Any], tier_benefits: s.TierBenefitList) -> list[str]:
    """Tiers on any published ladder version, and any tier that already includes a benefit."""
    who = current(request).principal()
    async with reading(request) as conn:
        versions = await tiers.list_versions(conn, who)
    codes = [t["code"] for v in versions.items if v.status != "draft" for t in v.tiers]
    codes += [item.tier for item in tier_benefits.items]
    return list(dict.fromkeys(codes))


# Catalogue ---------------------------------------------------------------------------------


@get("/benefits", name="console-benefits")
async def benefits_list(request: Request[Any, Any, Any]) -> Template:
    return await _list_page(request)


async def _list_page(
    request: Request[Any, Any, Any],
    *,
    status_code: int = 200,
    tier_form: dict[str, Any] | None = None,
    tier_errors: dict[str, str] | None = None,
    campaign_form: dict[str, str] | None = None,
    campaign_errors: dict[str, str] | None = None,
) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        catalogue = await benefits.list_all(conn, who)
        tier_benefits = await benefits.list_tier_benefits(conn, who)
        campaigns = await benefits.list_campaigns(conn, who)
        segment_list = await segments.list_all(conn, who)
    by_tier: dict[str, list[str]] = {}
    for item in tier_benefits.items:
        by_tier.setdefault(item.tier, []).append(item.benefit)
    return render(
        request,
        "benefits/list.html",
        status_code=status_code,
        catalogue=catalogue.items,
        by_tier=by_tier,
        tier_codes=await _tier_codes(request, tier_benefits),
        campaigns=campaigns.items,
        segments=[(sg.code, sg.name or sg.code) for sg in segment_list.items],
        tier_form=tier_form or {},
        tier_errors=tier_errors or {},
        campaign_form=campaign_form or {},
        campaign_errors=campaign_errors or {},
    )


@get("/benefits/new", name="console-benefit-new")
async def benefit_new(request: Request[Any, Any, Any]) -> Template:
    return render(request, "benefits/edit.html", benefit=None, form=form_of(None), errors={}, types=TYPES)


def _create_of(values: dict[str, str]) -> s.BenefitCreate:
    kind = values.get("type", "")
    raw: dict[str, Any] = {
        "code": values.get("code", "").strip(),
        "type": kind,
        "names": _texts(values, "names"),
        "descriptions": _texts(values, "descriptions"),
        "params": params_of(kind, values),
        "channels": _channels(values),
        "valid_from": utc_moment("valid_from", values.get("valid_from", "")),
        "valid_until": utc_moment("valid_until", values.get("valid_until", "")),
    }
    return parse({k: v for k, v in raw.items() if v is not None}, s.BenefitCreate)


@post("/benefits", name="console-benefit-create", opt=needs("benefits"))
async def benefit_create(request: Request[Any, Any, Any]) -> Response[Any]:
    values = await form_data(request)
    try:
        req = _create_of(values)
        async with transaction(request) as conn:
            await benefits.create(conn, current(request).principal(), req)
    except DomainError as exc:
        errors = placed(errors_of(exc), FIELDS)
        status = 409 if exc.code.endswith("_exists") else 400
        if status == 409:
            errors = {"code": exc.detail}
        return render(request, "benefits/edit.html", status_code=status, benefit=None, form=values, errors=errors,
                      types=TYPES)  # fmt: skip
    return see_other(request, f"/console/benefits/{req.code}")


async def _benefit_page(
    request: Request[Any, Any, Any],
    code: str,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        view = await benefits.get(conn, who, code)
        count = await benefits.entitled_count(conn, who, code)
        page = await benefits.entitled_members(conn, who, code, request.query_params.get("cursor"), PAGE)
        tier_benefits = await benefits.list_tier_benefits(conn, who)
    return render(
        request,
        "benefits/edit.html",
        status_code=status_code,
        benefit=view,
        form=form if form is not None else form_of(view),
        errors=errors or {},
        types=TYPES,
        count=count,
        page=page,
        tiers_with=[t.tier for t in tier_benefits.items if t.benefit == code],
        first_page=bool(request.query_params.get("cursor")),
    )


@get("/benefits/{code:str}", name="console-benefit")
async def benefit_show(request: Request[Any, Any, Any], code: FromPath[str]) -> Template:
    return await _benefit_page(request, code)


@get("/benefits/{code:str}/members", name="console-benefit-members")
async def benefit_members(request: Request[Any, Any, Any], code: FromPath[str]) -> Template:
    """One page of the entitled members (htmx swaps it in place; a full page otherwise)."""
    if not is_htmx(request):
        return await _benefit_page(request, code)
    who = current(request).principal()
    async with reading(request) as conn:
        page = await benefits.entitled_members(conn, who, code, request.query_params.get("cursor"), PAGE)
    return render(request, "benefits/members.html", benefit_code=code, page=page,
                  first_page=bool(request.query_params.get("cursor")))  # fmt: skip


@get("/benefits/{code:str}/members.csv", name="console-benefit-export", opt=needs("export"))
async def benefit_export(request: Request[Any, Any, Any], code: FromPath[str]) -> Stream:
    """Every member entitled now, streamed page by page (keyset, one connection)."""
    who = current(request).principal()
    async with reading(request) as conn:
        await benefits.get(conn, who, code)  # a 404 page before the stream starts
    engine = request.app.state.engine

    async def rows() -> AsyncIterator[bytes]:
        yield b"member_id\r\n"
        async with engine.connect() as conn:
            cursor: str | None = None
            while True:
                page = await benefits.entitled_members(conn, who, code, cursor, EXPORT_PAGE)
                if page.items:
                    yield "".join(f"{_csv_cell(m)}\r\n" for m in page.items).encode()
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor

    return Stream(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="entitled-{code}.csv"'},
    )


def _csv_cell(value: str) -> str:
    if any(c in value for c in ',"\r\n') or value[:1] in ("=", "+", "-", "@"):
        # Quoted; a leading formula character is neutralised for spreadsheets.
        prefix = "'" if value[:1] in ("=", "+", "-", "@") else ""
        return '"' + (prefix + value).replace('"', '""') + '"'
    return value


@post("/benefits/{code:str}", name="console-benefit-update", opt=needs("benefits"))
async def benefit_update(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    values = await form_data(request)
    who = current(request).principal()
    try:
        async with reading(request) as conn:
            kind = (await benefits.get(conn, who, code)).type
        raw: dict[str, Any] = {
            "names": _texts(values, "names"),
            "descriptions": _texts(values, "descriptions"),
            "params": params_of(kind, values),
            "channels": _channels(values),
            "valid_from": utc_moment("valid_from", values.get("valid_from", "")),
            "valid_until": utc_moment("valid_until", values.get("valid_until", "")),
            "active": values.get("active") == "on",
        }
        req = parse({k: v for k, v in raw.items() if v is not None}, s.BenefitUpdate)
        async with transaction(request) as conn:
            await benefits.update(conn, who, code, req)
    except DomainError as exc:
        form = {**values, "code": code}
        return await _benefit_page(
            request, code, form=form, errors=placed(errors_of(exc), FIELDS), status_code=400
        )
    return see_other(request, f"/console/benefits/{code}")


# Tier benefits -----------------------------------------------------------------------------


@post("/tier-benefits", name="console-tier-benefits", opt=needs("benefits"))
async def tier_benefits_set(request: Request[Any, Any, Any]) -> Response[Any]:
    """What one tier includes: the ticked benefits (those it had keep their parameters)."""
    form = await request.form()
    chosen = [v for v in form.getall("benefit") if isinstance(v, str)] if "benefit" in form else []
    values = await form_data(request)
    tier = values.get("tier", "").strip()
    who = current(request).principal()
    try:
        if not tier:
            raise InvalidInput("tier", "name the tier (its code on the ladder)")
        async with transaction(request) as conn:
            had = {
                t.benefit: t.params
                for t in (await benefits.list_tier_benefits(conn, who)).items
                if t.tier == tier
            }
            req = s.TierBenefitsSet(
                benefits=[s.TierBenefitItem(benefit=code, params=had.get(code, {})) for code in chosen]
            )
            await benefits.set_tier_benefits(conn, who, tier, req)
    except DomainError as exc:
        errors = errors_of(exc)
        errors = {
            ("tier" if k == "tier" else "benefit" if k.startswith("benefits") else k): v
            for k, v in errors.items()
        }
        return await _list_page(
            request, status_code=400, tier_form={"tier": tier, "chosen": chosen}, tier_errors=errors
        )
    return see_other(request, "/console/benefits#tiers")


# Campaigns ---------------------------------------------------------------------------------


@post("/benefit-campaigns", name="console-campaign-create", opt=needs("campaigns"))
async def campaign_create(request: Request[Any, Any, Any]) -> Response[Any]:
    values = await form_data(request)
    who = current(request).principal()
    try:
        raw: dict[str, Any] = {k: values.get(k, "").strip() for k in ("code", "segment", "benefit")}
        raw["starts_at"] = utc_moment("starts_at", values.get("starts_at", ""))
        raw["ends_at"] = utc_moment("ends_at", values.get("ends_at", ""))
        for field in ("starts_at", "ends_at"):
            if raw[field] is None:
                raise InvalidInput(field, "is required")
        req = parse(raw, s.CampaignCreate)
        async with transaction(request) as conn:
            await benefits.create_campaign(conn, who, req)
    except DomainError as exc:
        errors = errors_of(exc)
        if exc.code == "segment_not_found":
            errors = {"segment": exc.detail}
        elif exc.code == "benefit_not_found":
            errors = {"benefit": exc.detail}
        elif exc.code.endswith("_exists"):
            errors = {"code": exc.detail}
        return await _list_page(
            request, status_code=400, campaign_form=values, campaign_errors=placed(errors, CAMPAIGN_FIELDS)
        )
    return see_other(request, "/console/benefits#campaigns")


ROUTES = [
    benefits_list,
    benefit_new,
    benefit_create,
    benefit_show,
    benefit_members,
    benefit_export,
    benefit_update,
    tier_benefits_set,
    campaign_create,
]
NAV = [NavEntry("Benefits", "/console/benefits", order=60)]
