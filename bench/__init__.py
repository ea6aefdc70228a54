"""`make bench`: the HTTP API against raw PostgreSQL, measured in the same run on the same server.

Modules: ``cli`` (orchestration), ``stack`` (servers, database, seed, granian), ``httpload`` (a
cheap keep-alive HTTP/1.1 load generator), ``workloads`` (what each workload sends),
``pgbench`` (raw SQL and engine-direct baselines), ``minimal_app`` (an HTTP reference app) and
``report`` (table, targets, JSON).
"""
