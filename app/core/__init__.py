"""Foundations every other package stands on: settings, database engines, logs, metrics,
time formats, errors, limits, the service's own MACs."""
