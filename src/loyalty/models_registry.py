"""Imports every models module so that ``loyalty.db.metadata`` knows every table (Alembic, tests)."""

from loyalty import db  # noqa: F401
from loyalty.activity import models as activity_models  # noqa: F401
from loyalty.audit import models as audit_models  # noqa: F401
from loyalty.benefits import models as benefit_models  # noqa: F401
from loyalty.console import models as console_models  # noqa: F401
from loyalty.facts import models as fact_models  # noqa: F401
from loyalty.imports import models as import_models  # noqa: F401
from loyalty.jobs import models as job_models  # noqa: F401
from loyalty.ledger import models as ledger_models  # noqa: F401
from loyalty.members import models as member_models  # noqa: F401
from loyalty.outbox import models as outbox_models  # noqa: F401
from loyalty.programmes import models as programme_models  # noqa: F401
from loyalty.reports import models as report_models  # noqa: F401
from loyalty.segments import models as segment_models  # noqa: F401
from loyalty.tiers import models as tier_models  # noqa: F401
from loyalty.webhooks import models as webhook_models  # noqa: F401
