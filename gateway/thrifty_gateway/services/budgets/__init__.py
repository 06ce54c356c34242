"""Budgets: money per tenant and per route per period (day/month, UTC), soft and hard limits,
spend kept in Redis (shared by replicas, survives restarts) or in memory (embedded mode)."""
