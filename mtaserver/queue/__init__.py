"""Delivery scheduling: per-queue state, limits, retries, expiry and bounces."""
