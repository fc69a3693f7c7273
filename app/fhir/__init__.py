"""FHIR R4 AuditEvent, both ways: events exported as AuditEvent resources in a Bundle
(app.fhir.export), and AuditEvent resources mapped to events (app.fhir.intake), the one the
inverse of the other. The code systems both use are in app.fhir.codes."""
