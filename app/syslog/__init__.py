"""The IHE ATNA syslog receiver of `python -m app syslog`: RFC 5424 messages over TCP or TLS
(app.syslog.receiver), octet-counted frames (app.syslog.frames), sources and connection budgets
(app.syslog.connections), and what each message becomes: an event queued like `POST /events`'s,
or a dead letter (app.syslog.intake)."""
