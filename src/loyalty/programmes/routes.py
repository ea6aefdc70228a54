"""The caller's programme: read by every key, tuned by operators."""

from __future__ import annotations

from litestar import Controller, get, patch
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, STAFF_READ, WRITE
from loyalty.programmes import repository, service
from loyalty.programmes import schemas as s


def _view(row: dict) -> s.ProgrammeView:
    return s.ProgrammeView(**{k: v for k, v in row.items() if k != "id"})


class ProgrammeController(Controller):
    path = "/v1/programme"
    tags = ["programme"]

    @get("/", dependencies=READ, guards=[STAFF_READ])
    async def get(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.ProgrammeView:
        return _view(await repository.by_id(tx, who.programme_id))

    @patch("/", dependencies=WRITE, guards=[allow("operator")])
    async def update(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.ProgrammeUpdate],
    ) -> s.ProgrammeView:
        """Change the clawback policy, transfers, time zone or name."""
        changes = {
            k: v
            for k, v in (
                ("name", data.name),
                ("timezone", data.timezone),
                ("clawback_policy", data.clawback_policy),
                ("allow_transfers", data.allow_transfers),
            )
            if v is not None
        }
        return _view(await service.update_programme(tx, who.programme_id, changes, who=who))


ROUTES = [ProgrammeController]
