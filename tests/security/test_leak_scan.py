"""The suite-wide leak scan finds a planted leak in each place it watches (else a clean scan
proves nothing): a log record, an HTTP response, a database row, metrics output.

Each test plants canaries through the real wiring (the logging handler and the Tether app hook
that ``tests/conftest.py`` installs, the store scan the ``broker`` fixture runs), checks that the
session's scan recorded exactly the leak planted, then forgets those canaries so that the run
itself passes.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import text

from tests.integration.governed import BASE, SECRETS, register_agent, seed
from tests.security.canaries import ISSUED, SCAN, Leak, LeakScan, encodings, find_leaks, new_canary
from tether.api import create_app
from tether.broker import Broker

Plant = Callable[[str], str]


@pytest.fixture
def plant() -> Iterator[Plant]:
    """Canaries leaked on purpose: after the test, forgotten by the session's scan."""
    planted: list[str] = []

    def make(label: str) -> str:
        planted.append(new_canary(label))
        return planted[-1]

    yield make
    for canary in planted:
        ISSUED.remove(canary)
    SCAN.leaks[:] = [leak for leak in SCAN.leaks if leak.canary not in planted]


def leaks_of(canary: str) -> list[Leak]:
    return [leak for leak in SCAN.leaks if leak.canary == canary]


def assert_leaked(canary: str, source: str, kind: str) -> None:
    """The scan recorded ``canary`` in ``source`` (only there), in ``kind`` form (among others:
    a canary of unreserved characters is its own URL form)."""
    found = {(leak.source, leak.form.rsplit(" as ", 1)[1]) for leak in leaks_of(canary)}
    assert (source, kind) in found, found
    assert {where for where, _ in found} == {source}, found


# -- the scanner --------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    label=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12),
    before=st.binary(max_size=40),
    after=st.binary(max_size=40),
    kind=st.sampled_from(["plain", "url", "hex", "base64"]),
    choice=st.integers(0, 11),
)
def test_every_form_of_a_canary_is_found_wherever_it_sits(
    label: str, before: bytes, after: bytes, kind: str, choice: int
) -> None:
    canary = f"CANARY-{label}-0123456789abcdef01234567"
    if kind == "base64":
        # Encoded with its neighbours, as a leak inside a larger encoded blob would be.
        encode = base64.b64encode if choice % 2 else base64.urlsafe_b64encode
        blob = encode(before + canary.encode() + after)
    else:
        forms = sorted(encodings(canary)[kind])
        blob = before + forms[choice % len(forms)].encode() + after
    assert f"{canary[:20]}… as {kind}" in find_leaks(blob, [canary])
    assert find_leaks(blob, ["CANARY-someone-else-0123456789abcdef"]) == []


def test_clean_text_full_of_near_misses_has_no_leak() -> None:
    canary = new_canary("near-miss")
    near = canary[:-1] + ("0" if canary[-1] != "0" else "1")
    haystack = f"CANARY- {near} {near.encode().hex()} {base64.b64encode(near.encode()).decode()[:-6]}"
    assert find_leaks(haystack, [canary]) == []


# -- logs ---------------------------------------------------------------------------------------
def test_a_canary_in_a_log_record_or_its_exception_text_is_a_leak(plant: Plant) -> None:
    in_message, in_exception, from_library = plant("log"), plant("log-exc"), plant("log-lib")
    log = logging.getLogger("tether.leak_probe")
    log.debug("clean line")
    log.debug("token=%s", in_message)  # Tether's own loggers are scanned from DEBUG up
    try:
        raise RuntimeError(base64.b64encode(b"Bearer " + in_exception.encode()).decode())
    except RuntimeError:
        log.exception("upstream call failed")  # the traceback's text is part of the record
    logging.getLogger("sqlalchemy.leak_probe").warning("bound %s", from_library.encode().hex())

    assert_leaked(in_message, "logs", "plain")
    assert_leaked(in_exception, "logs", "base64")
    assert_leaked(from_library, "logs", "hex")
    assert leaks_of(in_message)[0].where.startswith("log tether.leak_probe:")


# -- HTTP responses -----------------------------------------------------------------------------
async def test_a_canary_in_any_response_a_tether_app_sends_is_a_leak(broker: Broker, plant: Plant) -> None:
    in_body, in_header, in_error = plant("body/url"), plant("header"), plant("error")
    app = create_app(broker)

    @app.get("/leak-probe")
    async def probe() -> JSONResponse:
        return JSONResponse(
            {"echo": urllib.parse.quote(in_body, safe="")}, headers={"X-Probe": in_header.encode().hex()}
        )

    @app.get("/leak-probe/error")
    async def error() -> JSONResponse:
        return JSONResponse({"detail": f"cannot parse {in_error!r}"}, status_code=422)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        assert (await http.get("/leak-probe")).status_code == 200
        assert (await http.get("/leak-probe/error")).status_code == 422
        assert (await http.get("/v1/sys/health")).status_code == 200  # clean: nothing recorded

    assert_leaked(in_body, "http", "url")
    assert_leaked(in_header, "http", "hex")
    assert_leaked(in_error, "http", "plain")
    assert leaks_of(in_error)[0].where == "GET /leak-probe/error -> 422"


async def test_only_the_body_of_a_successful_reveal_or_dynamic_activation_is_exempt(
    broker: Broker, plant: Plant
) -> None:
    revealed, minted, denied, injected, header = (
        plant(label) for label in ("reveal", "dynamic", "denied", "inject", "reveal-header")
    )
    app = FastAPI()  # a stand-in serving canned activation answers, recognised as a Tether app
    app.state.broker = broker
    answers = {
        "reveal": (200, {"mode": "reveal", "value": revealed, "version": 1}, {}),
        "dynamic": (200, {"mode": "dynamic", "credential": {"password": minted}}, {}),
        "denied": (403, {"mode": "reveal", "value": denied}, {}),
        "inject": (200, {"mode": "inject", "value": injected}, {}),
        "header": (200, {"mode": "reveal", "value": "x"}, {"X-Value": header}),
    }

    @app.post("/v1/grants/{grant_id}/activate")
    async def activate(grant_id: str) -> JSONResponse:
        status, body, headers = answers[grant_id]
        return JSONResponse(body, status_code=status, headers=headers)

    exempt = SCAN.exempt["activation bodies"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        for grant_id in answers:
            await http.post(f"/v1/grants/{grant_id}/activate")

    assert SCAN.exempt["activation bodies"] == exempt + 3  # reveal, dynamic, and the header case
    assert leaks_of(revealed) == []
    assert leaks_of(minted) == []
    assert_leaked(denied, "http", "plain")
    assert_leaked(injected, "http", "plain")
    assert_leaked(header, "http", "plain")


async def test_a_real_reveal_activation_returns_the_value_and_is_not_a_leak(
    broker: Broker, admin: dict[str, str]
) -> None:
    values = {path: new_canary(path) for path in SECRETS}  # scanned with the rest of the suite
    exempt = SCAN.exempt["activation bodies"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(broker)), base_url=BASE
    ) as http:
        await seed(http, admin, values)
        bot = await register_agent(http, admin, "reveal-bot")
        task = await bot.request(
            "POST",
            "/v1/tasks",
            json={
                "purpose": "deploy",
                "objective": "ship",
                "secrets": ["prod/github/token"],
                "destinations": ["github"],
            },
        )
        assert task.status_code == 201, task.text
        grant = await bot.request(
            "POST",
            f"/v1/tasks/{task.json()['id']}/grants",
            json={"secret": "prod/github/token", "destination": "github", "mode": "reveal"},
        )
        assert grant.status_code == 201, grant.text
        activated = await bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert activated.status_code == 200, activated.text
    assert activated.json()["value"] == values["prod/github/token"]
    assert SCAN.exempt["activation bodies"] == exempt + 1
    assert [leak for value in values.values() for leak in leaks_of(value)] == []


# -- database -----------------------------------------------------------------------------------
async def test_a_canary_in_any_database_row_is_a_leak(broker: Broker, plant: Plant) -> None:
    as_text, as_base64 = plant("row"), plant("row-b64")
    schema = broker.settings.pg_schema
    table = f'"{schema}".leak_probe' if broker.settings.backend == "postgresql" else "leak_probe"
    engine = broker.storage._engine  # type: ignore[attr-defined]
    async with engine.begin() as conn:  # a table Tether does not know: the scan reads them all
        await conn.execute(text(f"CREATE TABLE {table} (note TEXT)"))
        await conn.execute(
            text(f"INSERT INTO {table} (note) VALUES (:a), (:b)"),
            {"a": f"note: {as_text}", "b": base64.b64encode(as_base64.encode()).decode()},
        )
    dumps = SCAN.scanned["db"]

    await SCAN.check_store(broker, "leak probe")

    assert SCAN.scanned["db"] > dumps
    assert_leaked(as_text, "db", "plain")
    assert_leaked(as_base64, "db", "base64")


# -- metrics ------------------------------------------------------------------------------------
async def test_a_canary_in_metrics_output_is_a_leak(
    broker: Broker, admin: dict[str, str], plant: Plant
) -> None:
    in_label = plant("metric")
    app = create_app(broker)
    app.state.metrics.secret_writes.labels(in_label).inc()  # as if a value became a label

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        scrape = await http.get("/metrics", headers=admin)
    assert scrape.status_code == 200
    assert in_label in scrape.text
    assert_leaked(in_label, "metrics", "plain")
    assert leaks_of(in_label)[0].where == "GET /metrics -> 200"


def test_a_canary_in_a_metrics_registry_is_a_leak_when_rendered_at_the_end(plant: Plant) -> None:
    in_label = plant("registry")
    registry = CollectorRegistry()
    Counter("probe", "a probe", ["route"], registry=registry).labels(in_label.encode().hex()).inc()
    scan = LeakScan()
    scan.metric_registries[id(registry)] = registry

    scan.check_metric_registries()

    assert [(leak.source, leak.form.rsplit(" as ", 1)[1]) for leak in scan.leaks] == [("metrics", "hex")]
    assert scan.scanned["metrics"] == 1
