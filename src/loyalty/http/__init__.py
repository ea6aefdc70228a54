"""HTTP plumbing every route shares, below the domains: who is calling (principal), guards and
role sets, transaction dependencies, the fast-route lanes, the edge checks, the one problem map,
health, security headers and rate limits. Nothing here imports a domain package."""
