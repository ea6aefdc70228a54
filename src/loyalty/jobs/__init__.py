"""Runs of background jobs that an operator asked for, kept in PostgreSQL so that their outcome
(succeeded with a result, or failed with a short error) outlives arq's result in Redis."""
