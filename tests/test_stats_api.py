"""The Stats API (manual: "Stats"; mailgun-api.md §9): `GET /v3/<domain>/stats/total`, the
account's `GET /v3/stats/total`, and the older manual's `GET /v3/<domain>/stats`, read after
real sends, deliveries to a capture MX, a hard bounce, a send dropped for it, and tracked opens
and clicks; then the same numbers through the official SDKs (mailgun-python and mailgun.js)."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from mailgun.client import AsyncClient

from mta.app import Server
from mta.events import Event, record
from mta.stats.counting import day_start, hour_start, month_start
from mta.stats.totals import stats_time
from tests.capture import start_capture
from tests.conftest import DOMAIN, Running, make_config, url_for
from tests.js import mailgun_js
from tests.tracked import hit, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEST = "dest.example.test"
OTHER = "other.example.test"
TOTAL = f"/v3/{DOMAIN}/stats/total"
LEGACY = f"/v3/{DOMAIN}/stats"
TWO_DAYS_AGO = day_start(time.time()) - 2 * 86400 + 3600


@dataclass
class Sent:
    """A server after what every test here reads, and when it was done."""

    running: Running
    at: float


async def send(running: Running, to: list[str], *form: tuple[str, str], domain: str = DOMAIN) -> str:
    fields = [("from", f"News <news@{domain}>"), ("subject", "Hello"), ("html", "<p>Hi</p>"),
              *(("to", addr) for addr in to), *form]
    async with running.session() as api, api.post(f"/v3/{domain}/messages", data=fields) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["id"]).strip("<>")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sent(
    tmp_path_factory: pytest.TempPathFactory, tls_pair: tuple[str, str],
    request: pytest.FixtureRequest, module_engine: str,
) -> AsyncIterator[Sent]:
    """Of mg.example.test: a send to two (tagged `Newsletter`, both delivered, one opened twice,
    the other clicking once), a hard bounce, then a send dropped for that bounce; one send
    accepted two days ago. Of other.example.test: one send, delivered."""
    mx = await start_capture()
    config = make_config(
        tmp_path_factory.mktemp("stats"), tls_pair, outbound__enabled=True,
        dns__static_mx={DEST: [mx.address]}, store__url=url_for(request, module_engine),
    )
    server = Server(config)
    await server.start()
    try:
        services = server.services
        assert services is not None
        await services.domains.create(DOMAIN)
        await services.domains.create(OTHER)
        _, key = await services.keys.create()
        running = Running(server, f"http://127.0.0.1:{server.api_port}", key, DOMAIN)
        await record(services.store, DOMAIN, [Event("accepted", timestamp=TWO_DAYS_AGO)])
        at = time.time()
        reader, clicker = f"reader@{DEST}", f"clicker@{DEST}"
        news = await send(running, [reader, clicker], ("o:tag", "Newsletter"))
        await send(running, [f"unknown@{DEST}"])
        await wait_for(running, "failed", 1)
        await send(running, [f"unknown@{DEST}"])  # dropped: the address bounced
        await send(running, [f"someone@{DEST}"], domain=OTHER)
        await wait_for(running, "delivered", 3)
        await wait_for(running, "failed", 2)
        await hit(running, "o", news, reader)
        await hit(running, "o", news, reader)
        await hit(running, "c", news, clicker, url="https://example.com/")
        await wait_for(running, "clicked", 1)
        yield Sent(running, at)
    finally:
        await server.stop()
        await mx.close()


async def call(sent: Sent, path: str, params: Any = ()) -> tuple[int, Any]:
    async with sent.running.session() as api, api.get(path, params=params) as resp:
        return resp.status, await resp.json(content_type=None)


async def get(sent: Sent, path: str, params: Any = ()) -> Any:
    status, body = await call(sent, path, params)
    assert status == 200, body
    return body


def summed(body: dict[str, Any], event: str) -> dict[str, Any]:
    """One event's counters summed over every bucket of a stats body."""

    def add(total: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
        return {k: add(total.get(k, {}), v) if isinstance(v, dict) else total.get(k, 0) + v
                for k, v in counts.items()}

    out: dict[str, Any] = {}
    for bucket in body["stats"]:
        out = add(out, bucket[event])
    return out


ALL = [("event", e) for e in ("accepted", "delivered", "failed", "opened", "clicked")]


# -- /stats/total ---------------------------------------------------------------------------------


async def test_totals_count_what_was_sent_delivered_failed_opened_and_clicked(sent: Sent):
    body = await get(sent, TOTAL, ALL)
    assert summed(body, "accepted") == {"incoming": 0, "outgoing": 5, "total": 5}
    assert summed(body, "delivered") == {"smtp": 2, "http": 0, "total": 2}
    assert summed(body, "failed") == {
        "permanent": {"bounce": 1, "delayed-bounce": 0, "suppress-bounce": 1,
                      "suppress-unsubscribe": 0, "suppress-complaint": 0, "old": 0, "total": 2},
        "temporary": {"espblock": 0, "total": 0},
    }
    assert summed(body, "opened") == {"total": 2, "unique": 1}
    assert summed(body, "clicked") == {"total": 1, "unique": 1}


async def test_the_default_period_is_the_last_seven_days_by_day_with_every_day_listed(sent: Sent):
    body = await get(sent, TOTAL, [("event", "accepted")])
    today = day_start(time.time())
    days = [today - n * 86400 for n in range(7, -1, -1)]
    assert body["resolution"] == "day"
    assert body["start"] == stats_time(days[0]) and body["end"] == stats_time(days[-1])
    assert [bucket["time"] for bucket in body["stats"]] == [stats_time(d) for d in days]
    by_day = {bucket["time"]: bucket["accepted"]["total"] for bucket in body["stats"]}
    assert by_day[stats_time(day_start(TWO_DAYS_AGO))] == 1
    assert sum(by_day.values()) == 5


async def test_each_bucket_holds_only_the_requested_events(sent: Sent):
    body = await get(sent, TOTAL, [("event", "opened"), ("event", "failed")])
    assert set(body) == {"start", "end", "resolution", "stats"}
    assert all(set(bucket) == {"time", "opened", "failed"} for bucket in body["stats"])


async def test_times_are_rfc2822_in_utc(sent: Sent):
    body = await get(sent, TOTAL, [("event", "stored")])
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} 00:00:00 UTC", body["start"])
    assert summed(body, "stored") == {"total": 0}


@pytest.mark.parametrize(
    ("duration", "resolution", "first", "counts_two_days_ago"),
    [
        ("3h", "hour", lambda now: hour_start(now - 3 * 3600), False),
        ("2d", "day", lambda now: day_start(now - 2 * 86400), True),
        ("1m", "month", lambda now: month_start(month_start(now) - 1), True),
    ],
)
async def test_duration_overrides_start_and_resolution_counting_back_from_now_in_its_unit(
    sent: Sent, duration: str, resolution: str, first: Any, counts_two_days_ago: bool
):
    now = time.time()
    body = await get(sent, TOTAL, [("event", "accepted"), ("duration", duration),
                                   ("resolution", "day"), ("start", str(now - 400 * 86400))])
    assert body["resolution"] == resolution
    assert body["stats"][0]["time"] == stats_time(first(now))
    assert body["stats"][-1]["time"] == stats_time({"hour": hour_start, "day": day_start,
                                                    "month": month_start}[resolution](now))
    # The event of two days ago is dated from the day this module was loaded; when the suite
    # crosses midnight UTC before this test, "2d" counted back from now no longer reaches it.
    in_window = first(now) <= TWO_DAYS_AGO
    midnight_crossed = day_start(now) > day_start(TWO_DAYS_AGO) + 2 * 86400
    assert in_window == counts_two_days_ago or midnight_crossed
    assert summed(body, "accepted")["total"] == 4 + in_window


async def test_start_and_end_are_taken_as_rfc2822_or_epoch_seconds(sent: Sent):
    start = email.utils.formatdate(TWO_DAYS_AGO, usegmt=True)  # how mailgun.js sends a Date
    end = str(TWO_DAYS_AGO + 60)
    body = await get(sent, TOTAL, [("event", "accepted"), ("start", start), ("end", end),
                                   ("resolution", "hour")])
    assert [bucket["time"] for bucket in body["stats"]] == [stats_time(hour_start(TWO_DAYS_AGO))]
    assert summed(body, "accepted")["total"] == 1


async def test_an_hour_resolution_counts_the_sends_of_the_last_hour(sent: Sent):
    params = [*ALL, ("resolution", "hour"), ("start", str(sent.at - 3600))]
    body = await get(sent, TOTAL, params)
    assert body["resolution"] == "hour"
    assert summed(body, "accepted")["total"] == 4
    assert summed(body, "delivered")["total"] == 2


async def test_event_may_be_sent_with_brackets_and_repeats_once(sent: Sent):
    body = await get(sent, TOTAL, [("event[]", "accepted"), ("event[]", "delivered"),
                                   ("event", "accepted")])
    assert all(list(bucket) == ["time", "accepted", "delivered"] for bucket in body["stats"])


async def test_account_totals_add_up_every_domain(sent: Sent):
    account = await get(sent, "/v3/stats/total", [("event", "accepted"), ("event", "delivered")])
    assert summed(account, "accepted")["total"] == 6
    assert summed(account, "delivered")["total"] == 3
    other = await get(sent, f"/v3/{OTHER}/stats/total", [("event", "accepted")])
    assert summed(other, "accepted")["total"] == 1


async def test_an_unknown_domain_is_404(sent: Sent):
    for path in ("/v3/nowhere.test/stats/total", "/v3/nowhere.test/stats"):
        assert await call(sent, path, [("event", "accepted")]) == (
            404, {"message": "Domain not found: nowhere.test"}
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([], "'event' parameter is required"),
        ([("duration", "1m")], "'event' parameter is required"),
        ([("event", "accepted"), ("event", "sent")],
         "'sent' is not a valid event; valid events are accepted, delivered, failed, opened,"
         " clicked, unsubscribed, complained, stored"),
        ([("event", "accepted"), ("start", "Tue, 14 Feb 2012 00:00:00 UTC"),
          ("end", "Mon, 13 Feb 2012 00:00:00 UTC")], "'start' must be before 'end'"),
        ([("event", "accepted"), ("resolution", "week")],
         "Invalid resolution: 'week' (expected hour, day or month)"),
        ([("event", "accepted"), ("duration", "7w")],
         "Invalid duration: '7w' (expected e.g. 24h, 7d, 1m)"),
        ([("event", "accepted"), ("start", "yesterday")],
         "'start' is not a valid date: 'yesterday' (RFC 2822 or epoch seconds)"),
        ([("event", "accepted"), ("end", "14/02/2012")],
         "'end' is not a valid date: '14/02/2012' (RFC 2822 or epoch seconds)"),
        ([("event", "accepted"), ("resolution", "hour"), ("start", "0")],
         "Too many hours in the period (max 9600): use a coarser resolution"),

        ([("event", "accepted"), ("duration", "999999m")],
         "Too many months in the period (max 9600): use a coarser resolution"),
    ],
)
async def test_bad_parameters_are_refused_with_a_message(
    sent: Sent, params: list[tuple[str, str]], message: str
):
    for path in (TOTAL, "/v3/stats/total"):
        assert await call(sent, path, params) == (400, {"message": message})


# -- the legacy /stats ----------------------------------------------------------------------------


def day_items(body: dict[str, Any], day: float) -> dict[str, dict[str, Any]]:
    created_at = email.utils.formatdate(day_start(day), usegmt=True)
    return {item["event"]: item for item in body["items"] if item["created_at"] == created_at}


async def test_legacy_stats_list_each_event_per_day_newest_first_with_tag_counts(sent: Sent):
    body = await get(sent, LEGACY)
    today = day_items(body, sent.at)
    assert {event: (item["total_count"], item["tags"]) for event, item in today.items()} == {
        "sent": (4, {"newsletter": 2}),
        "delivered": (2, {"newsletter": 2}),
        "opened": (2, {"newsletter": 2}),
        "clicked": (1, {"newsletter": 1}),
        "bounced": (1, {}),
        "dropped": (1, {}),
    }
    assert list(today) == ["sent", "delivered", "opened", "clicked", "bounced", "dropped"]
    assert body["items"][-1]["created_at"] == email.utils.formatdate(
        day_start(TWO_DAYS_AGO), usegmt=True
    )
    assert (body["items"][-1]["event"], body["items"][-1]["total_count"]) == ("sent", 1)
    assert body["total_count"] == len(body["items"]) == 7


async def test_legacy_items_have_a_stable_id_per_domain_day_and_event(sent: Sent):
    first, again = await get(sent, LEGACY), await get(sent, LEGACY)
    ids = [item["id"] for item in first["items"]]
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == [item["id"] for item in again["items"]]


async def test_legacy_stats_narrow_by_event_and_start_date(sent: Sent):
    sent_only = await get(sent, LEGACY, [("event", "sent"), ("event", "bounced")])
    assert [(i["event"], i["total_count"]) for i in sent_only["items"]] == [
        ("sent", 4), ("bounced", 1), ("sent", 1)
    ]
    today = time.strftime("%Y-%m-%d", time.gmtime(sent.at))
    since_today = await get(sent, LEGACY, [("start-date", today)])
    assert since_today["total_count"] == 6
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(sent.at + 86400))
    assert await get(sent, LEGACY, [("start-date", tomorrow)]) == {"total_count": 0, "items": []}


async def test_legacy_stats_page_with_skip_and_limit_and_count_them_all(sent: Sent):
    everything = (await get(sent, LEGACY))["items"]
    page = await get(sent, LEGACY, [("skip", "2"), ("limit", "3")])
    assert page == {"total_count": 7, "items": everything[2:5]}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("event", "accepted")],
         "'accepted' is not a valid event; valid events are sent, delivered, opened, clicked,"
         " bounced, dropped, complained, unsubscribed"),
        ([("start-date", "14/02/2012")],
         "'start-date' must be a date as YYYY-MM-DD, got '14/02/2012'"),
        ([("start-date", "2012-02-30")],
         "'start-date' must be a date as YYYY-MM-DD, got '2012-02-30'"),
        ([("limit", "many")], "'limit' must be a whole number from 0 to 1000"),
        ([("skip", "-1")], "'skip' must be a whole number from 0 to 1000000000"),
    ],
)
async def test_bad_legacy_parameters_are_refused_with_a_message(
    sent: Sent, params: list[tuple[str, str]], message: str
):
    assert await call(sent, LEGACY, params) == (400, {"message": message})


# -- official SDKs --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:DEPRECATED API CALL:DeprecationWarning")
async def test_mailgun_python_reads_the_domain_totals(sent: Sent):
    running = sent.running
    async with AsyncClient(auth=("api", running.key), api_url=running.url) as client:
        response = await client.stats_total.get(
            domain=DOMAIN, filters={"event": ["accepted", "delivered"], "duration": "1m"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["resolution"] == "month"
    assert summed(body, "accepted")["outgoing"] == 5
    assert summed(body, "delivered")["total"] == 2


async def test_mailgun_js_parses_domain_and_account_totals(sent: Sent):
    query = {"event": ["accepted", "delivered", "failed"], "duration": "1m"}
    domain = await mailgun_js.call(sent.running, "domainStats", query)
    assert domain["resolution"] == "month"
    this_month = stats_time(month_start(sent.at))
    [bucket] = [b for b in domain["stats"] if b["time"] == _iso(this_month)]
    assert bucket["delivered"]["total"] == 2
    assert bucket["failed"]["permanent"]["total"] == 2
    assert domain["start"] == _iso(stats_time(month_start(month_start(time.time()) - 1)))
    account = await mailgun_js.call(
        sent.running, "accountStats", {"event": "delivered", "duration": "1m"}
    )
    [bucket] = [b for b in account["stats"] if b["time"] == _iso(this_month)]
    assert bucket == {"time": _iso(this_month), "delivered": {"smtp": 3, "http": 0, "total": 3}}


def _iso(stats_time_text: str) -> str:
    """A stats time as JavaScript's Date.toJSON() gives it back."""
    parsed = email.utils.parsedate_to_datetime(stats_time_text.replace("UTC", "+0000"))
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.000Z")
