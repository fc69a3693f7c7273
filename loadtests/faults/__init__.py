"""Fault injection with exact accounting: the service runs as real processes on throwaway
PostgreSQL and Redis servers, under load from clients that choose their own event ids; faults are
injected (writers, API processes, PostgreSQL and Redis killed or stopped, poison events, SIGTERM
of everything), and afterwards every acknowledged id must be stored exactly once with the
content it was sent with (or be in the dead-letter stream, when it was meant to be) and the chain
must verify.

    python -m loadtests.faults [--short] [--scenario NAME ...]
"""
