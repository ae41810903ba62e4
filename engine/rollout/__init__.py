"""Rollouts that decide: a canary steps up, rolls back or is promoted on its own evidence."""
