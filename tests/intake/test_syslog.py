"""`python -m app syslog`: IHE ATNA audit messages (DICOM PS3.15 and RFC 3881 XML) in RFC 5424
messages over TCP with octet counting, sent by a standard client (util-linux `logger`) and over
TLS with a client certificate; sources authenticated, unusable messages rejected and counted,
never a crash, a message sent twice stored once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.intake.atna import NotAnAuditMessage, event_of, parse_xml
from app.intake.syslog.frames import BadMessage, rfc5424_body
from app.intake.syslog.receiver import start_server
from app.local.servers import free_port
from app.writer.writer import BatchWriter, CircuitBreaker
from tests.conftest import SettingsFactory, running, stored_rows, wait_stored
from tests.served import environment

DICOM_READ = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<AuditMessage xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<EventIdentification EventActionCode="R" EventDateTime="2026-11-20T12:00:00.250+01:00"'
    ' EventOutcomeIndicator="0">'
    '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/>'
    '<PurposeOfUse csd-code="TREAT" codeSystemName="2.16.840.1.113883.5.8" originalText="t"/>'
    '<PurposeOfUse csd-code="BTG" codeSystemName="2.16.840.1.113883.5.8" originalText="b"/>'
    "</EventIdentification>"
    '<ActiveParticipant UserID="pacs@10.0.0.9" UserIsRequestor="false"'
    ' NetworkAccessPointID="10.0.0.9" NetworkAccessPointTypeCode="2"/>'
    '<ActiveParticipant UserID="dr.house" UserIsRequestor="true"'
    ' NetworkAccessPointID="10.0.0.42" NetworkAccessPointTypeCode="2">'
    '<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>'
    "</ActiveParticipant>"
    '<AuditSourceIdentification AuditSourceID="ris-1"/>'
    '<ParticipantObjectIdentification ParticipantObjectID="mrn-77^^^&amp;1.2.3&amp;ISO"'
    ' ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
    '<ParticipantObjectIDTypeCode csd-code="2" originalText="Patient Number"/>'
    "</ParticipantObjectIdentification>"
    '<ParticipantObjectIdentification ParticipantObjectID="1.2.840.99.1"'
    ' ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">'
    '<ParticipantObjectIDTypeCode csd-code="110180" originalText="Study Instance UID"/>'
    "</ParticipantObjectIdentification>"
    "</AuditMessage>"
)
RFC3881_LOGIN = (
    "<AuditMessage>"
    '<EventIdentification EventActionCode="E" EventDateTime="2026-11-20T11:00:00Z"'
    ' EventOutcomeIndicator="4">'
    '<EventID code="110114" codeSystemName="DCM" displayName="User Authentication"/>'
    '<EventTypeCode code="110122" codeSystemName="DCM" displayName="Login"/>'
    "</EventIdentification>"
    '<ActiveParticipant UserID="nurse.lee" UserIsRequestor="true"/>'
    '<AuditSourceIdentification AuditSourceID="idp"/>'
    "</AuditMessage>"
)


def test_dicom_and_rfc3881_messages_map_to_events() -> None:
    read = event_of(parse_xml(DICOM_READ))
    assert read["action"] == "patient.record.read" and read["status"] == "success"
    assert (read["principal_id"], read["principal_type"]) == ("dr.house", "Source Role ID")
    assert read["session_context"] == {"ip_address": "10.0.0.42"}
    assert read["patient_id"] == "mrn-77^^^&1.2.3&ISO"
    assert (read["target_resource_type"], read["target_resource_id"]) == (
        "Study Instance UID",
        "1.2.840.99.1",
    )
    assert (read["purpose_of_use"], read["break_glass"]) == ("TREAT", True)
    assert read["data_classification"] == "PHI"
    login = event_of(parse_xml(RFC3881_LOGIN))
    assert (login["action"], login["status"], login["principal_id"]) == (
        "auth.login",
        "failure",
        "nurse.lee",
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not xml at all", ""),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]><AuditMessage/>', ""),
        ("<Other/>", "AuditMessage"),
        ("<AuditMessage><ActiveParticipant UserID='x'/></AuditMessage>", "EventIdentification"),
        (RFC3881_LOGIN.replace('EventOutcomeIndicator="4"', 'EventOutcomeIndicator="3"'), "Event"),
        (RFC3881_LOGIN.replace(' UserID="nurse.lee"', ""), "ActiveParticipant@UserID"),
        ("<AuditMessage>" + "<a>" * 5000 + "</a>" * 5000 + "</AuditMessage>", "AuditMessage"),
    ],
)
def test_unusable_messages_name_what_is_wrong(text: str, field: str) -> None:
    with pytest.raises(NotAnAuditMessage) as raised:
        event_of(parse_xml(text))
    assert raised.value.field.startswith(field)


@pytest.mark.parametrize(
    "text",
    [
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><AuditMessage>&a;</AuditMessage>',
        '<!DOCTYPE AuditMessage SYSTEM "http://example.org/a.dtd"><AuditMessage/>',
        '<?xml version="1.0"?>\n<!DOCTYPE AuditMessage><AuditMessage/>',
    ],
)
def test_document_type_declarations_are_refused_before_anything_is_expanded(text: str) -> None:
    with pytest.raises(NotAnAuditMessage, match="document type declarations are not accepted"):
        parse_xml(text)


def test_markup_inside_character_data_is_text_not_a_declaration() -> None:
    root = parse_xml("<AuditMessage><![CDATA[<!DOCTYPE x>]]></AuditMessage>")
    assert root.text == "<!DOCTYPE x>"


def test_rfc5424_messages_give_their_body() -> None:
    frame = '<110>1 2026-11-20T12:00:00Z host app 1 ATNA [x@1 a="]\\"b"][y@2] \ufeff<A/>'
    assert rfc5424_body(frame.encode()) == "<A/>"
    assert rfc5424_body(b"<110>1 - - - - - - <A/>") == "<A/>"
    for bad in (b"no pri", b"<13>Nov 20 12:00:00 host old bsd format", b"<13>1 - - - - - [open"):
        with pytest.raises(BadMessage):
            rfc5424_body(bad)


async def _logger(port: int, message: str) -> None:
    command = [
        "logger", "--tcp", "--octet-count", "--rfc5424", "-n", "127.0.0.1", "-P", str(port),
        "--size", "65536", "--msgid", "ATNA", "-t", "ris", message,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err


def _count(res: Any, outcome: str) -> float:
    return float(res.metrics.syslog_messages.labels(outcome=outcome)._value.get())


async def test_messages_from_logger_are_stored_once_and_bad_ones_counted(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    if shutil.which("logger") is None:
        pytest.fail("util-linux logger is not installed")
    port = free_port()
    settings = settings_factory(syslog_port=port, syslog_sources=f"127.0.0.1={org}")
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            await _logger(port, DICOM_READ)
            await _logger(port, "this is no audit message")
            await _logger(port, RFC3881_LOGIN)
            await _logger(port, DICOM_READ)  # again, with a new syslog header
            await wait_stored(database_url, org, 2)
            for _ in range(100):
                if _count(res, "accepted") == 3 and _count(res, "rejected") == 1:
                    break
                await asyncio.sleep(0.05)
            assert (_count(res, "accepted"), _count(res, "rejected")) == (3, 1)
            await asyncio.sleep(0.3)
            rows = {r["action"]: r for r in await stored_rows(database_url, org)}
    assert set(rows) == {"patient.record.read", "auth.login"}  # the resend stored once
    read = rows["patient.record.read"]
    assert (read["principal_id"], read["patient_id"]) == ("dr.house", "mrn-77^^^&1.2.3&ISO")
    assert read["timestamp"].isoformat() == "2026-11-20T11:00:00.250000+00:00"
    assert json.loads(read["details"])["audit_source"] == "ris-1"
    assert read["batch_id"] is not None  # sealed


async def test_unknown_sources_and_broken_frames_are_cut_off(
    settings_factory: SettingsFactory, org: str
) -> None:
    port = free_port()
    settings = settings_factory(syslog_port=port, syslog_sources=f"192.0.2.1={org}")
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            await _logger(port, DICOM_READ)  # sent, and the connection closed on it unread
            for _ in range(100):
                if _count(res, "refused_source"):
                    break
                await asyncio.sleep(0.05)
            assert _count(res, "refused_source") == 1
            assert _count(res, "accepted") == 0 and await res.stream.queued_events() == 0
    settings = settings_factory(syslog_port=port, syslog_sources=f"127.0.0.1={org}")
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"<13>1 - - - - - - not octet counted\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
            writer.close()
            assert _count(res, "bad_frame") == 1
            assert await res.stream.queued_events() == 0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(where: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate CN=pacs-1."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test-ca", "-days", "2",
             cwd=where)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", None)):
        cn = "127.0.0.1" if name == "server" else "pacs-1"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
                 cwd=where)  # fmt: skip
        sign = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2"]  # fmt: skip
        if extra:
            (where / f"{name}.ext").write_text(extra + "\n")
            sign += ["-extfile", f"{name}.ext"]
        _openssl(*sign, cwd=where)


def frame(message: str) -> bytes:
    body = f"<110>1 2026-11-20T12:00:00Z host ris - ATNA - {message}".encode()
    return str(len(body)).encode() + b" " + body


async def test_tls_with_a_client_certificate(
    settings_factory: SettingsFactory, org: str, database_url: str, tmp_path: Path
) -> None:
    make_pki(tmp_path)
    port = free_port()
    settings = settings_factory(
        syslog_port=port,
        syslog_sources=f"CN=pacs-1={org}",
        syslog_tls_cert=str(tmp_path / "server.pem"),
        syslog_tls_key=str(tmp_path / "server.key"),
        syslog_tls_ca=str(tmp_path / "ca.pem"),
    )
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    async with running(settings) as svc:
        server = await start_server(svc.app.state.resources)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=anonymous)
            writer.write(frame(RFC3881_LOGIN))  # no certificate: refused in the handshake
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.write(frame(RFC3881_LOGIN))
                await writer.drain()
                await asyncio.wait_for(writer.wait_closed(), 5)
                raise ConnectionError("closed")
            # Refused by TLS itself, before any source is looked at.
            assert _count(svc.app.state.resources, "refused_source") == 0
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            writer.write(frame(DICOM_READ) + frame(RFC3881_LOGIN))
            await writer.drain()
            await wait_stored(database_url, org, 2)
            writer.close()
    actions = sorted(r["action"] for r in await stored_rows(database_url, org))
    assert actions == ["auth.login", "patient.record.read"]


async def test_the_syslog_command_runs_until_sigterm(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    """`python -m app syslog` as its own process; the writers of `running` seal what it queues."""
    port = free_port()
    settings = settings_factory(syslog_port=port, syslog_sources=f"127.0.0.1={org}")
    env = {
        **os.environ,
        **environment(settings, syslog_port=port, syslog_sources=f"127.0.0.1={org}"),
    }
    async with running(settings):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "syslog", env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            for _ in range(300):
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                assert process.returncode is None, "syslog exited"
                await asyncio.sleep(0.1)
            await _logger(port, RFC3881_LOGIN)
            await wait_stored(database_url, org, 1)
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, err


async def test_a_full_queue_holds_the_sender_back_and_nothing_is_lost(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    port = free_port()
    settings = settings_factory(
        run_writers=False,
        max_queue_depth=3,
        org_queue_share=1,
        syslog_port=port,
        syslog_sources=f"127.0.0.1={org}",
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        full = [{"action": "x.y", "status": "success", "principal_id": "p"}] * 3
        headers = await svc.key(org, ("ingest",))
        assert (
            await svc.client.post("/events/bulk", json=full, headers=headers)
        ).status_code == 202
        server = await start_server(res)
        async with server:
            await _logger(port, RFC3881_LOGIN)
            for _ in range(100):
                if _count(res, "held_back"):
                    break
                await asyncio.sleep(0.05)
            assert _count(res, "held_back") >= 1 and _count(res, "accepted") == 0
            writer = BatchWriter(
                settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "w"
            )
            try:
                while await res.stream.queued_events():
                    await writer.cycle(asyncio.Event())
                for _ in range(100):  # the receiver tries again each second
                    if _count(res, "accepted") == 1:
                        break
                    await asyncio.sleep(0.1)
                while await res.stream.queued_events():
                    await writer.cycle(asyncio.Event())
            finally:
                await writer.close()
    actions = [r["action"] for r in await stored_rows(database_url, org)]
    assert sorted(actions) == ["auth.login", "x.y", "x.y", "x.y"]


async def _closed_promptly(reader: asyncio.StreamReader, within_s: float = 2.0) -> bool:
    """The receiver closed the connection (EOF or reset) within `within_s`; False while it
    stays open."""
    try:
        return await asyncio.wait_for(reader.read(), within_s) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def _until(check: Any, within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    assert check()


async def test_an_oversize_message_is_skipped_and_the_connection_reads_on(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    port = free_port()
    settings = settings_factory(
        syslog_port=port, syslog_sources=f"127.0.0.1={org}", syslog_max_message_bytes=4096
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame(DICOM_READ))
            oversize = b"x" * 3_000_000  # declared and sent whole, in pieces
            writer.write(str(len(oversize)).encode() + b" ")
            for start in range(0, len(oversize), 256 * 1024):
                writer.write(oversize[start : start + 256 * 1024])
                await writer.drain()
            writer.write(frame(RFC3881_LOGIN))
            await writer.drain()
            await wait_stored(database_url, org, 2)
            assert (_count(res, "rejected"), _count(res, "bad_frame")) == (1, 0)
            assert not await _closed_promptly(reader, 0.3)  # still reading
            writer.write(b"12345678 ")  # an absurd length: the stream cannot be framed
            await writer.drain()
            assert await _closed_promptly(reader, 5)
            writer.close()
            assert _count(res, "bad_frame") == 1


def _tls_settings(settings_factory: SettingsFactory, pki: Path, **overrides: Any) -> Any:
    return settings_factory(
        syslog_tls_cert=str(pki / "server.pem"),
        syslog_tls_key=str(pki / "server.key"),
        syslog_tls_ca=str(pki / "ca.pem"),
        **overrides,
    )


async def test_tls_refuses_an_unknown_address_before_the_handshake(
    settings_factory: SettingsFactory, org: str, tmp_path: Path
) -> None:
    make_pki(tmp_path)
    port = free_port()
    settings = _tls_settings(
        settings_factory, tmp_path, syslog_port=port, syslog_sources=f"192.0.2.1={org}"
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
            try:
                closed = await asyncio.gather(*(_closed_promptly(r) for r, _ in connections))
            finally:
                for _, writer in connections:
                    writer.close()
            assert all(closed), f"{closed.count(False)} of 50 idle connections left open"
            await _until(lambda: _count(res, "refused_source") == 50)


async def test_tls_handshakes_time_out(
    settings_factory: SettingsFactory, org: str, tmp_path: Path
) -> None:
    make_pki(tmp_path)
    port = free_port()
    settings = _tls_settings(
        settings_factory,
        tmp_path,
        syslog_port=port,
        syslog_sources=f"127.0.0.1={org}",
        syslog_tls_handshake_timeout_s=0.5,
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert await _closed_promptly(reader, 5), "a silent handshake kept its connection"
            finally:
                writer.close()
            await _until(lambda: _count(res, "refused_handshake") == 1)


async def test_connection_caps_refuse_extra_connections(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    port = free_port()
    settings = settings_factory(
        syslog_port=port,
        syslog_sources=f"127.0.0.1={org},127.0.0.2={org}",
        syslog_max_connections=3,
        syslog_max_connections_per_source=2,
    )

    async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opened = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        await asyncio.sleep(0.2)  # the receiver takes it in before the next one comes
        return opened

    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            held = [await connect("127.0.0.1"), await connect("127.0.0.1")]
            extra = await connect("127.0.0.1")  # over the cap of one address
            held.append(await connect("127.0.0.2"))
            over_all = await connect("127.0.0.2")  # over the cap of all
            try:
                assert await _closed_promptly(extra[0])
                assert await _closed_promptly(over_all[0])
                for reader, _ in held:
                    assert not await _closed_promptly(reader, 0.2)
                held[0][1].write(frame(RFC3881_LOGIN))
                await held[0][1].drain()
                await wait_stored(database_url, org, 1)
            finally:
                for _, writer in [*held, extra, over_all]:
                    writer.close()
            assert _count(res, "refused_busy") == 2


async def _dead_letters(svc: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = await svc.client.get(
        "/queue/dead-letter", params={"include_payload": "true"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_rejected_messages_go_to_the_senders_dead_letters(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    port = free_port()
    settings = settings_factory(
        syslog_port=port, syslog_sources=f"127.0.0.1={org}", syslog_max_message_bytes=4096
    )
    future = RFC3881_LOGIN.replace("2026-11-20T11:00:00Z", "2099-01-01T00:00:00Z")
    long_user = RFC3881_LOGIN.replace("nurse.lee", "n" * 300)
    unmappable = "<AuditMessage><ActiveParticipant UserID='x'/></AuditMessage>"
    async with running(settings) as svc:
        res = svc.app.state.resources
        headers = await svc.key(org, ("admin", "read"))
        server = await start_server(res)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for message in (future, long_user, unmappable, RFC3881_LOGIN, "y" * 5000):
                writer.write(frame(message))
            await writer.drain()
            await wait_stored(database_url, org, 1)
            await _until(lambda: _count(res, "rejected") + _count(res, "bad_frame") == 4)
            writer.close()
            letters = await _dead_letters(svc, headers)
            assert len(letters) == 4, letters
            for letter in letters:
                assert letter["error"].startswith("syslog message rejected: ")
                kept = letter["payload"][0]
                assert kept["source"] == "127.0.0.1"
                assert len(kept["message"].encode()) <= 4096
            errors = [letter["error"] for letter in letters]
            assert "timestamp" in errors[0] or "future" in errors[0], errors[0]
            assert "string_too_long" in errors[1], errors[1]
            assert "EventIdentification" in errors[2], errors[2]
            assert "4096" in errors[3], errors[3]
            assert letters[0]["payload"][0]["message"].endswith(future)
            assert letters[3]["payload"][0]["truncated"] is True
            replay = await svc.client.post(
                "/queue/dead-letter/replay", json={"all": True}, headers=headers
            )  # not events: nothing to replay, only to look at and delete
            assert replay.status_code == 200 and replay.json()["requeued_entries"] == 0
            deleted = await svc.client.delete(
                "/queue/dead-letter", params={"all": "true", "confirm": "delete"}, headers=headers
            )
            assert deleted.status_code == 200 and deleted.json()["deleted_entries"] == 4
            stats = await res.stream.stats()
            assert stats["accepted_total"] == (
                stats["persisted_total"]
                + stats["dead_lettered_events"]
                + stats["queued_events"]
                + stats["discarded_events"]
            ), stats


async def test_what_was_read_before_shutdown_is_kept(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    port = free_port()
    settings = settings_factory(
        run_writers=False,
        max_queue_depth=3,
        org_queue_share=1,
        shutdown_grace_s=1.0,
        syslog_port=port,
        syslog_sources=f"127.0.0.1={org}",
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        headers = await svc.key(org, ("ingest", "admin", "read"))
        full = [{"action": "x.y", "status": "success", "principal_id": "p"}] * 3
        assert (
            await svc.client.post("/events/bulk", json=full, headers=headers)
        ).status_code == 202
        server = await start_server(res)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame(RFC3881_LOGIN))
            await writer.drain()
            await _until(lambda: _count(res, "held_back") >= 1)
        # The receiver has stopped with the message read and the queue still full.
        writer.close()
        writer_task = BatchWriter(
            settings, res.stream, res.metrics, CircuitBreaker(3, res.metrics), "w"
        )
        try:
            while await res.stream.queued_events():  # room for the listing's own audit record
                await writer_task.cycle(asyncio.Event())
            letters = await _dead_letters(svc, headers)
            assert len(letters) == 1 and letters[0]["events"] == 1, letters
            assert "stopped" in letters[0]["error"]
            replay = await svc.client.post(
                "/queue/dead-letter/replay", json={"all": True}, headers=headers
            )
            assert replay.status_code == 200 and replay.json()["requeued_events"] == 1
            for _ in range(50):
                if not await res.stream.queued_events():
                    break
                await writer_task.cycle(asyncio.Event())
        finally:
            await writer_task.close()
    rows = await stored_rows(database_url, org)  # with the traces of the dead-letter calls
    actions = sorted(r["action"] for r in rows if not r["action"].startswith("audit."))
    assert actions == ["auth.login", "x.y", "x.y", "x.y"]


async def test_an_empty_host_listens_on_every_interface(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    port = free_port()
    settings = settings_factory(syslog_host="", syslog_port=port, syslog_sources=f"127.0.0.2={org}")
    async with running(settings) as svc:
        server = await start_server(svc.app.state.resources)
        async with server:
            assert "0.0.0.0" in {s.getsockname()[0] for s in server.sockets}
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=("127.0.0.2", 0)
            )
            writer.write(frame(RFC3881_LOGIN))
            await writer.drain()
            await wait_stored(database_url, org, 1, within_s=10)
            writer.close()


async def test_control_bytes_do_not_swell_dead_letters(
    settings_factory: SettingsFactory, org: str
) -> None:
    """A message of control bytes is kept in at most about 4/3 of its size (orjson writes each
    as \\u0001, six bytes)."""
    port = free_port()
    settings = settings_factory(
        syslog_port=port, syslog_sources=f"127.0.0.1={org}", syslog_max_message_bytes=16384
    )
    sent = [frame("\x01" * 16000) for _ in range(30)] + [frame('"\\' * 8000)]
    async with running(settings) as svc:
        res = svc.app.state.resources
        keys = res.stream.shards[0].keys
        server = await start_server(res)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(sent))
            await writer.drain()
            await _until(lambda: _count(res, "rejected") == len(sent))
            writer.close()
            await _until(lambda: _count(res, "dead_lettered") == len(sent))
        used = int(await res.stream.client.memory_usage(keys.dead, samples=0))
        payloads = await res.stream.client.xrange(keys.dead)
    size = sum(len(f) for f in sent)
    assert len(payloads) == len(sent)
    assert sum(len(fields[b"payload"]) for _, fields in payloads) <= 1.4 * size
    # Redis' own share on top: each entry's node, rounded up to the allocator's size class.
    assert used <= 1.6 * size, f"{used} bytes in Redis for {size} sent"


async def test_past_the_dead_letter_caps_rejected_messages_are_dropped_and_reading_goes_on(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    """One bad device cannot stall its organization: past the count or byte cap a rejected
    message is counted (`rejected_dropped`) and dropped, and valid messages behind it flow."""
    port = free_port()
    settings = settings_factory(
        syslog_port=port,
        syslog_sources=f"127.0.0.1={org}",
        syslog_max_dead_letters=3,
        syslog_max_dead_letter_bytes=2000,
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        headers = await svc.key(org, ("admin", "read"))
        server = await start_server(res)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for message in ("bad a", "y" * 3000, "bad b", "bad c", "bad d"):
                writer.write(frame(message))  # kept, over the bytes, kept, kept, over the count
            writer.write(frame(RFC3881_LOGIN))
            await writer.drain()
            await wait_stored(database_url, org, 1, within_s=10)
            await _until(lambda: _count(res, "rejected_dropped") == 2)
            writer.close()
            letters = await _dead_letters(svc, headers)
            kept = [letter["payload"][0]["message"] for letter in letters]
            assert [message[-5:] for message in kept] == ["bad a", "bad b", "bad c"]
            assert (_count(res, "rejected"), _count(res, "accepted")) == (5, 1)
            assert _count(res, "held_back") == 0


async def test_rejected_messages_are_logged_at_most_once_each_10_s(
    settings_factory: SettingsFactory, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per source every 10 s (with the number left out on the next): a device
    sending garbage cannot flood the log."""
    caplog.set_level(logging.WARNING, logger="app.intake.syslog")
    port = free_port()
    settings = settings_factory(syslog_port=port, syslog_sources=f"127.0.0.1={org}")
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(frame(f"bad {n}") for n in range(20)))
            await writer.drain()
            await _until(lambda: _count(res, "rejected") == 20)
            writer.close()
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 1, lines


async def test_idle_handshakes_cannot_lock_a_certified_sender_out(
    settings_factory: SettingsFactory, org: str, database_url: str, tmp_path: Path
) -> None:
    """With only CN= sources and no allowed networks any address may try a handshake; idle
    connections from several addresses fill the handshake budget, yet a sender with a
    certificate still gets in (the oldest unauthenticated connection makes way) and is stored,
    the main budget untouched by them."""
    make_pki(tmp_path)
    port = free_port()
    settings = _tls_settings(
        settings_factory,
        tmp_path,
        syslog_port=port,
        syslog_sources=f"CN=pacs-1={org}",
        syslog_max_connections=8,
        syslog_max_connections_per_source=2,
        syslog_max_handshakes=8,
        syslog_max_handshakes_per_source=2,
        syslog_tls_handshake_timeout_s=60,
    )
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            idle = []
            for n in range(2, 6):  # 4 addresses x 2: the per-source share of each
                for _ in range(2):
                    idle.append(
                        await asyncio.open_connection(
                            "127.0.0.1", port, local_addr=(f"127.0.0.{n}", 0)
                        )
                    )
            try:
                await _until(lambda: len(server.intake.tasks) == 8)
                for attempt in range(3):  # a reconnecting sender is let in each time
                    _, writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            "127.0.0.1", port, ssl=client, local_addr=("127.0.0.9", 0)
                        ),
                        10,
                    )
                    writer.write(frame(RFC3881_LOGIN.replace("nurse.lee", f"nurse.{attempt}")))
                    await writer.drain()
                    await wait_stored(database_url, org, attempt + 1, within_s=10)
                    writer.close()
                    idle.append(
                        await asyncio.open_connection(
                            "127.0.0.1", port, local_addr=(f"127.0.0.{6 + attempt}", 0)
                        )
                    )  # and the budget filled again behind it
                    await _until(lambda: len(server.intake.unproven) == 8)
            finally:
                for _, held in idle:
                    held.close()
            assert _count(res, "refused_busy") == 0
            assert _count(res, "refused_handshake") == 3  # the oldest idle made way each time


def test_per_source_caps_key_ipv6_by_its_64_and_unmap_ipv4() -> None:
    from app.intake.syslog.connections import peer_address, source_key

    assert peer_address("::ffff:10.0.0.7") == "10.0.0.7"
    assert peer_address("2001:db8:0:0::1") == "2001:db8::1"
    assert peer_address("10.0.0.7") == "10.0.0.7"
    assert source_key("10.0.0.7") == "10.0.0.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::2")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")


async def test_certificate_names_without_networks_warn_at_start(
    settings_factory: SettingsFactory, org: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_pki(tmp_path)
    caplog.set_level(logging.WARNING, logger="app.intake.syslog")
    settings = _tls_settings(
        settings_factory, tmp_path, syslog_port=free_port(), syslog_sources=f"CN=pacs-1={org}"
    )
    async with running(settings) as svc:
        async with await start_server(svc.app.state.resources):
            pass
    assert any("AUDIT_SYSLOG_ALLOWED_NETWORKS" in r.getMessage() for r in caplog.records)


async def test_a_message_cut_at_shutdown_is_counted_lost(
    settings_factory: SettingsFactory, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="app.intake.syslog")
    port = free_port()
    settings = settings_factory(
        shutdown_grace_s=0.2, syslog_port=port, syslog_sources=f"127.0.0.1={org}"
    )
    async with running(settings) as svc:
        res = svc.app.state.resources
        server = await start_server(res)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"1000 <110>1 - - - - - - <Au")  # and the rest never comes
            await writer.drain()
            await asyncio.sleep(0.3)
        writer.close()
        assert _count(res, "lost") == 1
    assert any("lost" in r.getMessage() for r in caplog.records)
