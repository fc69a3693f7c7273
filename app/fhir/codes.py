"""The code systems, profiles and URNs of FHIR R4 AuditEvents as this service writes them
(app.fhir.export) and reads them back (app.fhir.intake): the service's own URNs carry what FHIR
has no field for (the action, the stored record, the session)."""

from __future__ import annotations

ACTION_SYSTEM = "urn:audit-ingest:action"

PRINCIPAL_SYSTEM = "urn:audit-ingest:principal"

PATIENT_SYSTEM = "urn:audit-ingest:patient"

ORGANIZATION_SYSTEM = "urn:audit-ingest:organization"

EVENT_SYSTEM = "urn:audit-ingest:event"

SESSION_EXTENSION = "urn:audit-ingest:fhir:session-id"

USER_AGENT_EXTENSION = "urn:audit-ingest:fhir:user-agent"

DCM = "http://dicom.nema.org/resources/ontology/DCM"

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"

RESTFUL = "http://hl7.org/fhir/restful-interaction"

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"

OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"

REQUEST_ID = "XrequestId"  # BALP's entity type of a transaction's X-Request-Id

REQUEST_ID_DISPLAY = "transport specific unique identifier where http X-Request-Id is used"

SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
