"""Outbound webhooks: endpoints per programme, the delivery log, and the worker that signs and
sends domain events (Standard Webhooks) with retries, per-member order and leases."""
