"""Verification never passes silently: without a key it refuses (exit 2, 503) on every path;
a range that the ledger does not have is refused naming the head, never reported as a tamper
finding nor as "intact"; an empty ledger or range says that it is empty."""

from __future__ import annotations

import base64

import orjson
import pytest

from app.apikeys.keys import create_api_key
from tests.conftest import (
    Sealed,
    SealedFactory,
    SettingsFactory,
    event,
    key_row_mac,
    running,
    wait_stored,
)
from tests.ledger.test_proofs import _cli

# The default is one process per CPU (two here: the parallel path).
JOBS: tuple[list[str], ...] = ([], ["--jobs", "1"], ["--jobs", "2"])


def _env(url: str, keys: str, ledger_keys: str | None = None) -> dict[str, str]:
    return {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_SIGNING_KEYS": keys,
        "AUDIT_LEDGER_KEYS": keys if ledger_keys is None else ledger_keys,
        "AUDIT_LEDGER_PUBLIC_KEY": "",
    }


@pytest.mark.parametrize("jobs", JOBS, ids=["default", "one", "two"])
async def test_verify_without_a_key_refuses_on_every_path(
    sealed_factory: SealedFactory, jobs: list[str]
) -> None:
    sealed = await sealed_factory([3, 4])
    result = _cli(_env(sealed.res.settings.database_url, ""), "verify", *jobs)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "AUDIT_SIGNING_KEYS" in result.stderr
    assert '"intact"' not in result.stdout


async def test_every_path_checks_the_same_things(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 4, 2])
    wrong = "other:" + base64.b64encode(b"o" * 32).decode()
    summaries = []
    for jobs in JOBS:
        result = _cli(_env(sealed.res.settings.database_url, wrong), "verify", *jobs)
        assert result.returncode == 1, result.stdout + result.stderr
        summary = orjson.loads(result.stdout.splitlines()[-1])
        summaries.append((summary["findings_by_check"], summary["events"], summary["checked"]))
    assert summaries[0][0] == {"unknown_signing_key": 12}  # 9 events and 3 ledger heads
    assert summaries[0] == summaries[1] == summaries[2]


async def test_cli_refuses_ranges_the_ledger_does_not_have(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([3, 4])
    settings = sealed.res.settings
    env = _env(settings.database_url, settings.signing_keys, settings.ledger_keys)
    for args in (
        ("--from-seq", "3", "--to-seq", "5"),  # past the head (2): no tamper alarm
        ("--from-seq", "7"),
        ("--from-seq", "2", "--to-seq", "1"),
    ):
        result = _cli(env, "verify", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "head is seq 2" in result.stderr, result.stderr
        assert result.stdout == ""
    unknown = _cli(env, "verify", "--chain", "7")
    assert unknown.returncode == 2 and "chain 7" in unknown.stderr, unknown.stderr
    within = _cli(env, "verify", "--from-seq", "2", "--to-seq", "2")
    assert within.returncode == 3, within.stdout + within.stderr  # intact, not anchored
    assert orjson.loads(within.stdout.splitlines()[-1])["ledger_entries"] == 1


async def test_an_empty_ledger_says_so(sealed_factory: SealedFactory) -> None:
    sealed = await sealed_factory([])
    settings = sealed.res.settings
    env = _env(settings.database_url, settings.signing_keys, settings.ledger_keys)
    result = _cli(env, "verify")
    assert result.returncode == 2, result.stdout + result.stderr  # nothing to verify
    summary = orjson.loads(result.stdout.splitlines()[-1])
    assert summary["empty"] is True and summary["ledger_entries"] == 0
    assert "empty" in result.stderr and "NOT ANCHORED" not in result.stderr
    ranged = _cli(env, "verify", "--from-seq", "1", "--to-seq", "1")
    assert ranged.returncode == 2 and "the ledger of chain 0 is empty" in ranged.stderr


async def test_api_refuses_ranges_naming_the_head(
    settings_factory: SettingsFactory, org: str, database_url: str
) -> None:
    async with running(settings_factory()) as svc:
        headers = await svc.key(org)
        await svc.client.post("/events/bulk", json=[event()] * 5, headers=headers)
        await wait_stored(database_url, org, 5)
        head = await _head(svc.client, headers)
        far = 10**9  # every read is recorded and sealed, so the head moves while this runs
        for params in (
            {"from_seq": far, "to_seq": far + 10},
            {"from_seq": far},
            {"from_seq": 2, "to_seq": 1},
            {"chain": 7},
        ):
            resp = await svc.client.get("/integrity/verify", params=params, headers=headers)
            assert resp.status_code == 422, (params, resp.text)
            error = resp.json()["error"]
            assert error["code"] == "invalid_range"
            newest = error["details"]["heads"]["0"]
            assert newest >= head
            if "chain" not in params:
                assert f"head is seq {newest}" in error["message"]
        ok = await svc.client.get(
            "/integrity/verify", params={"from_seq": head, "to_seq": head}, headers=headers
        )
        summary = orjson.loads(ok.text.splitlines()[-1])["summary"]
        assert summary["intact"] is True and summary["ledger_entries"] == 1
        assert summary["empty"] is False


async def test_api_without_a_key_refuses_to_verify(
    settings_factory: SettingsFactory, org: str
) -> None:
    settings = settings_factory(signing_keys="", ledger_keys="", run_writers=False)
    async with running(settings) as svc:
        headers = await svc.key(org)
        resp = await svc.client.get("/integrity/verify", headers=headers)
        assert resp.status_code == 503, resp.text
        assert "AUDIT_SIGNING_KEYS" in resp.json()["error"]["message"]


async def _head(client: object, headers: dict[str, str]) -> int:
    from httpx import AsyncClient

    assert isinstance(client, AsyncClient)
    resp = await client.get("/integrity/verify", headers=headers)
    summary = orjson.loads(resp.text.splitlines()[-1])["summary"]
    return int(summary["chains"][0]["to_seq"])


async def test_naming_the_chain_still_finds_rows_outside_every_batch(
    sealed_factory: SealedFactory,
) -> None:
    from tests.ledger.test_verify import insert_forged

    sealed = await sealed_factory([3, 4])
    forged = await insert_forged(sealed, batch_id=None, leaf_index=None)
    settings = sealed.res.settings
    env = _env(settings.database_url, settings.signing_keys, settings.ledger_keys)
    for args in ([], ["--chain", "0"], ["--from-seq", "1"], ["--chain", "0", "--jobs", "1"]):
        result = _cli(env, "verify", *args)
        assert result.returncode == 1, (args, result.stdout[-500:])
        assert f'"event_unsealed","chain":0,"seq":null,"event_id":"{forged}"' in result.stdout


async def _times_past_python(sealed: Sealed) -> set[tuple[str, int, str | None]]:
    """Times PostgreSQL holds and Python's datetime does not (infinity, a year past 9999, a date
    BC), written over four sealed events' and a ledger entry's; the findings that names."""
    first, second = await sealed.rows(1), await sealed.rows(2)
    changes = [
        ("timestamp", "infinity", 1, first[0]),
        ("received_at", "-infinity", 1, first[2]),
        ("timestamp", "12000-01-01 00:00:00+00", 2, second[1]),
        ("received_at", "0044-03-15 00:00:00+00 BC", 2, second[3]),
    ]
    for column, value, _, row in changes:
        await sealed.conn.execute(
            f"UPDATE audit_log SET {column} = $2::text::timestamptz WHERE event_id = $1",
            row["event_id"],
            value,
        )
    await sealed.conn.execute("UPDATE audit_ledger SET sealed_at = 'infinity' WHERE seq = 2")
    named = {("event_hash_mismatch", seq, str(row["event_id"])) for _, _, seq, row in changes}
    return named | {("ledger_head_mismatch", 2, None)}


@pytest.mark.parametrize("jobs", JOBS, ids=["default", "one", "two"])
async def test_times_past_what_python_holds_are_findings(
    sealed_factory: SealedFactory, jobs: list[str]
) -> None:
    """Such a time is a finding naming its row; the verification does not fail."""
    sealed = await sealed_factory([3, 4])
    expected = await _times_past_python(sealed)
    settings = sealed.res.settings
    env = _env(settings.database_url, settings.signing_keys, settings.ledger_keys)
    result = _cli(env, "verify", *jobs)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    findings = {(x["check"], x["seq"], x["event_id"]) for x in lines if "check" in x}
    assert findings == expected, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


async def test_times_past_what_python_holds_are_findings_over_http(
    sealed_factory: SealedFactory,
) -> None:
    """The same over the API: a verification of the whole ledger names them, and so does the
    proof of one of those events."""
    sealed = await sealed_factory([3, 4])
    expected = await _times_past_python(sealed)
    settings = sealed.res.settings
    async with running(settings) as svc:
        engine = svc.app.state.resources.engine
        _, key = await create_api_key(
            engine,
            settings.operations_org,
            ["read", "verify", "operator"],
            "ops",
            key_row_mac(settings),
        )
        bearer = {"Authorization": f"Bearer {key}"}
        verified = await svc.client.get("/operator/integrity/verify", headers=bearer)
        assert verified.status_code == 200
        lines = [orjson.loads(line) for line in verified.content.splitlines()]
        assert [x for x in lines if "error" in x] == []
        findings = {
            (x["finding"]["check"], x["finding"]["seq"], x["finding"]["event_id"])
            for x in lines
            if "finding" in x
        }
        assert findings == expected
