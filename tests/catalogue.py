"""What a database's schema is, read from pg_catalog, to compare an upgraded database with a new one.

Every object of the public schema, keyed by name and valued by its definition as PostgreSQL
prints it back (pg_get_functiondef, pg_get_indexdef, ...), so that a stale function body or an
old overload shows up as a difference. Column order is left out: a column added by a later
ALTER TABLE comes last, and nothing here selects columns by position.
"""

from __future__ import annotations

import asyncpg

Catalogue = dict[str, dict[str, str]]

_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind::text || coalesce(' partitioned by ' || pg_get_partkeydef(c.oid), '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": """
        SELECT c.relname || '.' || a.attname,
               concat_ws(' ', format_type(a.atttypid, a.atttypmod),
                         CASE WHEN a.attnotnull THEN 'NOT NULL' END,
                         'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid),
                         CASE a.attidentity WHEN 'a' THEN 'IDENTITY ALWAYS' WHEN 'd' THEN 'IDENTITY BY DEFAULT' END,
                         CASE a.attgenerated WHEN 's' THEN 'GENERATED STORED' WHEN 'v' THEN 'GENERATED VIRTUAL' END,
                         'COLLATE ' || nullif(co.collname, 'default'))
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": """
        SELECT coalesce(c.relname, t.typname) || '.' || k.conname, k.contype::text || ' ' || pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        LEFT JOIN pg_type t ON t.oid = k.contypid
        WHERE n.nspname = 'public'""",
    "indexes": """
        SELECT i.relname, pg_get_indexdef(i.oid)
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = i.relnamespace
        WHERE n.nspname = 'public'""",
    "triggers": """
        SELECT c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal""",
    "functions": """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               CASE WHEN p.prokind IN ('a', 'w') THEN p.prokind::text ELSE pg_get_functiondef(p.oid) END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')""",
    "sequences": """
        SELECT c.relname,
               concat_ws(' ', format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                         s.seqcache, s.seqcycle, 'OWNED BY ' || oc.relname || '.' || oa.attname)
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        LEFT JOIN pg_class oc ON oc.oid = d.refobjid
        LEFT JOIN pg_attribute oa ON oa.attrelid = d.refobjid AND oa.attnum = d.refobjsubid
        WHERE n.nspname = 'public'""",
    "types": """
        SELECT t.typname, t.typtype::text || ' ' || coalesce(
            (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
            format_type(t.typbasetype, t.typtypmod), '')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public'
          AND (t.typtype IN ('e', 'd', 'r', 'm')
               OR t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
}


async def read(connection: asyncpg.Connection) -> Catalogue:
    out: Catalogue = {}
    for kind, query in _QUERIES.items():
        rows = await connection.fetch(query)
        out[kind] = {str(row[0]): str(row[1]) for row in rows}
    return out


def differences(expected: Catalogue, actual: Catalogue) -> list[str]:
    """One line per object that is missing, left behind or defined otherwise in ``actual``."""
    lines: list[str] = []
    for kind in expected.keys() | actual.keys():
        want, have = expected.get(kind, {}), actual.get(kind, {})
        for name in sorted(want.keys() - have.keys()):
            lines.append(f"{kind}: missing {name}")
        for name in sorted(have.keys() - want.keys()):
            lines.append(f"{kind}: left behind {name}: {have[name][:200]}")
        for name in sorted(want.keys() & have.keys()):
            if want[name] != have[name]:
                lines.append(
                    f"{kind}: differs {name}:\n    new:      {want[name][:300]}\n    upgraded: {have[name][:300]}"
                )
    return sorted(lines)
