"""What the HTTP API and the console share: typed dependencies, bearer authentication, the
mapping of a backing service's failure, the headers of answers with event data, and the guarded
stream that exports and verifications are sent in."""
