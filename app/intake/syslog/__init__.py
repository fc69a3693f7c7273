"""The IHE ATNA syslog receiver of `python -m app syslog`: RFC 5424 messages over TCP or TLS
(`receiver`), octet-counted frames (`frames`), sources and connection budgets (`connections`),
and what each message becomes: an event queued like `POST /events`'s, or a dead letter
(`intake`). No HTTP in it; it runs on what `intake.Pipeline` names."""
