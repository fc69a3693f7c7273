"""The compliance console in a real browser (Debian's chromium, driven by Selenium): sign in
with a read key, run the patient report, page, open an event and its verified proof, export,
verify the ledger, sign out; every page view recorded as a read; a revoked key signed out; forms
refused without their CSRF token. Set AUDIT_CONSOLE_SCREENSHOTS to a folder to keep screenshots
(docs/images has the ones the docs show)."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import WebDriverWait

from app.core.db import create_engine
from app.store import keyrows
from tests.conftest import SettingsFactory, event, running, wait_stored
from tests.served import served

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
READS = {"audit.phi_access", "audit.read", "audit.proof", "audit.export", "audit.verify"}


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", "--disable-gpu"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    folder = os.environ.get("AUDIT_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def local(url: str) -> str:
    """The served URL by name: browsers keep a Secure cookie over plain HTTP for localhost."""
    return url.replace("127.0.0.1", "localhost")


def until_title(driver: WebDriver, text: str) -> None:
    WebDriverWait(driver, 15).until(expected.title_contains(text))


def until_url(driver: WebDriver, ending: str) -> None:
    WebDriverWait(driver, 15).until(lambda d: d.current_url.endswith(ending))


def sign_in(driver: WebDriver, url: str, key: str) -> None:
    driver.get(f"{local(url)}/console")
    until_url(driver, "/console/login")
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.ID, "sign-in").click()
    until_title(driver, "Compliance console")


def seeded_events() -> list[dict[str, object]]:
    events = []
    for n in range(40):
        events.append(
            event(
                principal_id=["dr.smith", "nurse.lee", "dr.jones"][n % 3],
                patient_id="p-1",
                data_classification="PHI",
                purpose_of_use="TREAT",
                break_glass=n % 10 == 0,
                priority="high" if n % 10 == 0 else "normal",
                timestamp=f"2026-11-{10 + n % 15:02d}T10:{n:02d}:00Z",
            )
        )
    return events


async def reads_of(database_url: str, org: str, key_id: str) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT action FROM audit_log WHERE organization_id = $1 AND principal_id = $2",
            org,
            key_id,
        )
    finally:
        await conn.close()
    return {r["action"] for r in rows}


async def test_a_compliance_officer_uses_the_console_in_a_browser(
    settings_factory: SettingsFactory, org: str, database_url: str, browser: WebDriver
) -> None:
    settings = settings_factory()
    async with running(settings) as svc, served(settings, auth_cache_seconds=0) as server:
        res = svc.app.state.resources
        writer = await svc.key(org, ("ingest", "priority"))
        posted = await svc.client.post("/events/bulk", json=seeded_events(), headers=writer)
        assert posted.status_code == 202, posted.text
        await wait_stored(database_url, org, 40)
        from app.apikeys.keys import create_api_key

        key_id, key = await create_api_key(
            res.engine, org, ["read", "verify"], "privacy-office", res.macs.api_keys
        )

        base = local(server.url)

        def walk() -> None:
            driver = browser
            sign_in(driver, server.url, key)
            driver.find_element(By.ID, "patient_id").send_keys("p-1")
            driver.find_element(By.ID, "patient-report").click()
            until_title(driver, "Patient access report: p-1")
            tables = driver.find_elements(By.TAG_NAME, "table")
            people = {row.find_elements(By.TAG_NAME, "td")[0].text
                      for row in tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")}  # fmt: skip
            assert people == {"dr.smith", "nurse.lee", "dr.jones"}
            first_page = tables[1].find_elements(By.CSS_SELECTOR, "tbody tr")
            assert len(first_page) == 25
            assert driver.find_elements(By.CSS_SELECTOR, "tr.glass")  # break-glass marked
            shot(driver, "console-patient-report")
            export = driver.find_element(By.LINK_TEXT, "Export CSV").get_attribute("href")
            driver.find_element(By.LINK_TEXT, "Next page").click()
            WebDriverWait(driver, 15).until(lambda d: "cursor=" in d.current_url)
            second_page = driver.find_elements(By.CSS_SELECTOR, "table")[1]
            assert len(second_page.find_elements(By.CSS_SELECTOR, "tbody tr")) == 15
            second_page.find_element(By.CSS_SELECTOR, "tbody tr td a").click()
            until_title(driver, "Event ")
            assert driver.find_element(By.ID, "verified").text.startswith("Verified")
            shot(driver, "console-event-proof")
            cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
            assert export is not None
            got = httpx.get(export, cookies=cookies, timeout=20)
            assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
            assert got.text.count("\n") == 41  # the header and the 40 events
            driver.get(f"{base}/console/verify")
            driver.find_element(By.ID, "run-verify").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "verdict"))
            # No witness cosigns this service's log: nothing broke, but nothing anchors it.
            assert driver.find_element(By.ID, "verdict").text == "not anchored"
            assert "rests on what the database holds" in driver.page_source
            driver.get(f"{base}/console/events/not-a-uuid")
            assert "no such event" in driver.page_source
            driver.get(f"{base}/console/break-glass")
            assert len(driver.find_elements(By.CSS_SELECTOR, "tbody tr.glass")) == 4
            driver.find_element(By.ID, "sign-out").click()
            until_url(driver, "/console/login")
            driver.get(f"{base}/console/patient?patient_id=p-1")
            until_url(driver, "/console/login")  # the session is gone

        await asyncio.to_thread(walk)
        await asyncio.sleep(0.5)
        for _ in range(100):
            seen = await reads_of(database_url, org, key_id)
            if {"audit.phi_access", "audit.read", "audit.proof", "audit.export"} <= seen:
                break
            await asyncio.sleep(0.1)
        assert {
            "audit.phi_access",
            "audit.read",
            "audit.proof",
            "audit.export",
            "audit.verify",
        } <= seen


async def test_a_revoked_key_is_signed_out_and_forms_need_their_token(
    settings_factory: SettingsFactory, org: str, browser: WebDriver
) -> None:
    settings = settings_factory(run_writers=False)
    async with running(settings) as svc, served(settings, auth_cache_seconds=0) as server:
        res = svc.app.state.resources
        from app.apikeys.keys import create_api_key

        key_id, key = await create_api_key(res.engine, org, ["read"], "officer", res.macs.api_keys)
        await asyncio.to_thread(sign_in, browser, server.url, key)
        engine = create_engine(settings)
        try:
            async with engine.begin() as conn:
                assert await keyrows.revoke_api_key(conn, uuid.UUID(key_id))
        finally:
            await engine.dispose()

        def after_revocation() -> None:
            browser.get(f"{local(server.url)}/console/events")
            until_url(browser, "/console/login?signed_out=revoked")
            assert "no longer valid" in browser.page_source

        await asyncio.to_thread(after_revocation)
        async with httpx.AsyncClient(base_url=server.url) as client:
            forged = await client.post(
                "/console/login", content=f"api_key={key}&csrf=guess",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            assert forged.status_code == 403
            anonymous = await client.get("/console/events")
            assert anonymous.status_code == 303
            assert anonymous.headers["location"] == "/console/login"
            huge = await client.post(
                "/console/login", content=b"api_key=" + b"x" * 100_000,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            assert huge.status_code == 403  # read no further than the form's bound
            many = await client.post(
                "/console/login", content="&".join(f"f{i}=1" for i in range(20)),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            assert many.status_code == 403
            login = await client.get("/console/login")
            assert "default-src 'none'" in login.headers["content-security-policy"]
            cookie = login.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie


async def test_the_api_docs_and_the_console_need_nothing_from_outside(
    settings_factory: SettingsFactory,
) -> None:
    async with running(settings_factory(run_writers=False)) as svc:
        docs = await svc.client.get("/docs")
        assert docs.status_code == 200
        assert "cdn" not in docs.text.lower() and "https://" not in docs.text
        for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
            answer = await svc.client.get(asset)
            assert answer.status_code == 200 and len(answer.content) > 10_000, asset
        assert (await svc.client.get("/redoc")).status_code == 404  # it would load a CDN
        login = await svc.client.get("/console/login")
        assert "https://" not in login.text and "<script" not in login.text
        style = await svc.client.get("/console/static/console.css")
        assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
