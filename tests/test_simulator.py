"""The provider simulator, exercised over real loopback HTTP with httpx as the client."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import pytest

from syncer.model import EventKind
from syncer.simulator import DEFAULT_ACCOUNTS, Account, Fault, Simulator

SILICONFLOW_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "line_count"}
MOONSHOT_KEYS = {
    "id",
    "object",
    "bytes",
    "created_at",
    "filename",
    "purpose",
    "status",
    "status_details",
}
MOONSHOT_PURPOSES = {"file-extract", "image", "video", "batch"}


@pytest.fixture
def sim():
    with Simulator(seed=42) as simulator:
        yield simulator


@pytest.fixture
def client():
    with httpx.Client(timeout=5) as http:
        yield http


def auth(sim, account):
    return {"Authorization": f"Bearer {sim.api_key(account)}"}


def list_files(client, sim, account, params=None, **kwargs):
    """One list request the way syncer makes it (SiliconFlow needs purpose=batch)."""
    if params is None:
        params = {"purpose": "batch"} if account == "siliconflow" else {}
    url = f"{sim.base_url(account)}/files"
    return client.get(url, params=params, headers=auth(sim, account), **kwargs)


def items(response):
    body = response.json()
    return body["data"]["data"] if "code" in body else body["data"]


def read_until_failure(client, sim, account):
    """Stream one listing's raw bytes; return them and the error that ended it, if any."""
    received = bytearray()
    url = f"{sim.base_url(account)}/files"
    try:
        with client.stream("GET", url, headers=auth(sim, account)) as response:
            for piece in response.iter_raw():
                received += piece
    except httpx.HTTPError as error:
        return bytes(received), error
    return bytes(received), None


# --- Response shapes -----------------------------------------------------------------


def test_siliconflow_listing_has_the_documented_shape(sim, client):
    ids = sim.add_files("siliconflow", 3)

    response = list_files(client, sim, "siliconflow", {"purpose": "batch", "limit": 100})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-siliconcloud-trace-id"]
    body = response.json()
    assert body.keys() == {"code", "message", "status", "data"}
    assert (body["code"], body["message"], body["status"]) == (20000, "Ok", True)
    assert body["data"].keys() == {"data", "object"}
    assert body["data"]["object"] == "file"
    listed = body["data"]["data"]
    assert [item["id"] for item in listed] == ids
    for item in listed:
        assert item.keys() == SILICONFLOW_KEYS
        assert re.fullmatch(r"file-[a-z]{10}", item["id"])
        assert (item["object"], item["purpose"]) == ("file", "batch")
        assert all(type(item[key]) is int for key in ("bytes", "created_at", "line_count"))
        assert isinstance(item["filename"], str)
    assert listed == sim.files("siliconflow")


def test_moonshot_listing_has_the_documented_shape(sim, client):
    ids = sim.add_files("moonshot", 20)

    response = list_files(client, sim, "moonshot")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.keys() == {"object", "data"}  # no has_more: Moonshot does not page
    assert body["object"] == "list"
    assert [item["id"] for item in body["data"]] == ids
    for item in body["data"]:
        assert item.keys() == MOONSHOT_KEYS
        assert re.fullmatch(r"[0-9a-z]{20}", item["id"])
        assert item["object"] == "file"
        assert item["purpose"] in MOONSHOT_PURPOSES
        assert (item["status"], item["status_details"]) == ("ok", "")
        assert type(item["bytes"]) is int
        assert type(item["created_at"]) is int
        assert isinstance(item["filename"], str)
    assert body["data"] == sim.files("moonshot")


def test_extra_accounts_are_mounted_under_their_names_and_kept_apart():
    accounts = [
        Account("kimi-a", "moonshot", "key-a"),
        Account("kimi-b", "moonshot", "key-b"),
    ]
    with Simulator(accounts, seed=1) as sim, httpx.Client() as client:
        sim.add_files("kimi-a", 2)
        assert sim.base_url("kimi-b") == f"http://127.0.0.1:{sim.port}/kimi-b/v1"

        assert len(items(list_files(client, sim, "kimi-a"))) == 2
        assert items(list_files(client, sim, "kimi-b")) == []
        wrong_key = {"Authorization": "Bearer key-a"}
        assert client.get(f"{sim.base_url('kimi-b')}/files", headers=wrong_key).status_code == 401


# --- Authentication and routing ----------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer sk-live-SECRET", "Basic sk-sim-siliconflow", "Bearer"]
)
def test_siliconflow_rejects_a_bad_key_as_plain_text(sim, client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}

    response = client.get(
        f"{sim.base_url('siliconflow')}/files", params={"purpose": "batch"}, headers=headers
    )

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Invalid token"


@pytest.mark.parametrize("authorization", [None, "Bearer sk-live-SECRET", "Basic sk-sim-moonshot"])
def test_moonshot_rejects_a_bad_key_as_json(sim, client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}

    response = client.get(f"{sim.base_url('moonshot')}/files", headers=headers)

    assert response.status_code == 401
    assert response.json() == {
        "error": {"type": "invalid_authentication_error", "message": "Invalid Authentication"}
    }


def test_the_authorization_header_is_never_echoed(sim, client):
    for account in ("siliconflow", "moonshot"):
        for path in ("/files", "/nowhere"):
            response = client.get(
                sim.base_url(account) + path, headers={"Authorization": "Bearer sk-live-SECRET"}
            )
            assert "SECRET" not in response.text
            assert not any("SECRET" in value for value in response.headers.values())


def test_unknown_paths_get_each_providers_404(sim, client):
    root = f"http://127.0.0.1:{sim.port}"
    unknown_account = client.get(f"{root}/nobody/v1/files")
    siliconflow = client.get(
        f"{sim.base_url('siliconflow')}/models", headers=auth(sim, "siliconflow")
    )
    moonshot = client.get(f"{sim.base_url('moonshot')}/models", headers=auth(sim, "moonshot"))

    assert (unknown_account.status_code, unknown_account.text) == (404, "404 page not found")
    assert (siliconflow.status_code, siliconflow.text) == (404, "404 page not found")
    assert moonshot.status_code == 404
    assert moonshot.json()["error"]["type"] == "resource_not_found_error"


# --- SiliconFlow query parameters --------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"purpose": "fine-tune"},
        {"purpose": "batch", "limit": "0"},
        {"purpose": "batch", "limit": "ten"},
    ],
)
def test_siliconflow_rejects_bad_parameters_with_its_400_shape(sim, client, params):
    response = list_files(client, sim, "siliconflow", params)

    assert response.status_code == 400
    body = response.json()
    assert body.keys() == {"code", "message", "data"}
    assert body["code"] == 20012


def test_siliconflow_returns_at_most_limit_files_oldest_first(sim, client):
    ids = sim.add_files("siliconflow", 25)

    def listed(params):
        return [item["id"] for item in items(list_files(client, sim, "siliconflow", params))]

    assert listed({"purpose": "batch"}) == ids[:10]  # the documented default limit
    assert listed({"purpose": "batch", "limit": 7}) == ids[:7]
    assert listed({"purpose": "batch", "limit": 1000}) == ids


# --- Moonshot pagination -----------------------------------------------------------


def test_moonshot_pages_follow_after_cursors(sim, client):
    sim.set_page_size("moonshot", 4)
    ids = sim.add_files("moonshot", 10)
    pages, after = [], None

    while True:
        params = {} if after is None else {"after": after}
        body = list_files(client, sim, "moonshot", params).json()
        pages.append([item["id"] for item in body["data"]])
        if not body["has_more"]:
            break
        after = pages[-1][-1]

    assert [len(page) for page in pages] == [4, 4, 2]
    assert [file_id for page in pages for file_id in page] == ids


def test_moonshot_cursor_survives_the_deletion_of_its_file(sim, client):
    sim.set_page_size("moonshot", 4)
    ids = sim.add_files("moonshot", 10)
    sim.delete_file("moonshot", ids[3])

    body = list_files(client, sim, "moonshot", {"after": ids[3]}).json()

    assert [item["id"] for item in body["data"]] == ids[4:8]
    assert body["has_more"] is True


def test_moonshot_rejects_an_unknown_cursor(sim, client):
    sim.set_page_size("moonshot", 4)

    response = list_files(client, sim, "moonshot", {"after": "never-existed"})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_page_size_can_be_set_per_account_up_front():
    accounts = [Account("kimi", "moonshot", "key", page_size=2)]
    with Simulator(accounts) as sim, httpx.Client() as client:
        sim.add_files("kimi", 3)

        body = list_files(client, sim, "kimi").json()

    assert (len(body["data"]), body["has_more"]) == (2, True)


def test_broken_paginator_ignores_after_and_always_has_more(sim, client):
    sim.set_page_size("moonshot", 3)
    ids = sim.add_files("moonshot", 7)
    sim.set_persistent_fault("moonshot", Fault.broken_paginator())

    first = list_files(client, sim, "moonshot").json()
    second = list_files(client, sim, "moonshot", {"after": ids[2]}).json()
    sim.set_page_size("moonshot", None)
    unpaged = list_files(client, sim, "moonshot").json()

    assert first == second
    assert [item["id"] for item in first["data"]] == ids[:3]
    assert first["has_more"] is True
    assert (len(unpaged["data"]), unpaged["has_more"]) == (7, True)


# --- Scripted churn ----------------------------------------------------------------


def test_three_steps_make_every_kind_of_change_and_listings_follow(sim, client):
    changes = [change for _ in range(3) for change in sim.step()]

    kinds = {(c.account, c.kind, c.new_status) for c in changes}
    assert {
        ("siliconflow", EventKind.APPEARED, None),
        ("siliconflow", EventKind.DISAPPEARED, None),
        ("moonshot", EventKind.APPEARED, "processing"),
        ("moonshot", EventKind.STATUS_CHANGED, "ok"),
        ("moonshot", EventKind.STATUS_CHANGED, "error"),
        ("moonshot", EventKind.DISAPPEARED, None),
    } <= kinds
    for account in ("siliconflow", "moonshot"):
        expected: dict[str, str | None] = {}
        for change in (c for c in changes if c.account == account):
            if change.kind is EventKind.DISAPPEARED:
                del expected[change.file_id]
            else:
                expected[change.file_id] = change.new_status
        listed = items(list_files(client, sim, account))
        assert {item["id"]: item.get("status") for item in listed} == expected
    failed = [item for item in sim.files("moonshot") if item["status"] == "error"]
    assert failed
    assert all(item["status_details"] for item in failed)


def test_the_same_seed_gives_the_same_scenario():
    def run():
        sim = Simulator(seed=5, clock=lambda: 1_700_000_000.0)
        sim.add_files("moonshot", 5, status="processing")
        return [sim.step() for _ in range(8)], sim.files("moonshot"), sim.files("siliconflow")

    assert run() == run()


def test_step_for_one_account_leaves_the_others_alone():
    sim = Simulator(seed=5)

    changes = sim.step("moonshot") + sim.step("moonshot")

    assert {change.account for change in changes} == {"moonshot"}
    assert sim.files("siliconflow") == []


def test_changes_read_as_a_narration():
    sim = Simulator(seed=5)
    sim.step("moonshot")

    narrated = [str(change) for change in sim.step("moonshot")]

    assert any(line.endswith("processing -> error") for line in narrated)
    assert any(line.endswith("appeared (processing)") for line in narrated)


# --- Scripting state ---------------------------------------------------------------


def test_scripted_edits_show_in_the_listing(sim, client):
    first = sim.add_file("moonshot", filename="a.pdf", extra_field="kept")
    second = sim.add_file("moonshot", id="abcdefghij0123456789", status="processing")
    sim.update_file("moonshot", first, bytes=-1)
    sim.set_status("moonshot", second, "error", "file type not supported")

    listed = items(list_files(client, sim, "moonshot"))
    sim.delete_file("moonshot", first)

    assert [item["id"] for item in listed] == [first, second]
    assert (listed[0]["filename"], listed[0]["extra_field"], listed[0]["bytes"]) == (
        "a.pdf",
        "kept",
        -1,
    )
    assert (listed[1]["status"], listed[1]["status_details"]) == (
        "error",
        "file type not supported",
    )
    assert [item["id"] for item in items(list_files(client, sim, "moonshot"))] == [second]


def test_files_returns_copies(sim):
    file_id = sim.add_file("siliconflow")

    sim.files("siliconflow")[0]["filename"] = "changed"

    assert sim.files("siliconflow")[0]["filename"] != "changed"
    assert sim.files("siliconflow")[0]["id"] == file_id


def test_scripting_mistakes_fail_loudly(sim):
    file_id = sim.add_file("siliconflow")

    with pytest.raises(KeyError, match="no account 'nobody'"):
        sim.add_file("nobody")
    with pytest.raises(KeyError, match="has no file"):
        sim.delete_file("siliconflow", "file-missing")
    with pytest.raises(ValueError, match="taken"):
        sim.add_file("siliconflow", id=file_id)
    with pytest.raises(ValueError, match="no status"):
        sim.set_status("siliconflow", file_id, "ok")
    with pytest.raises(ValueError, match="cannot change"):
        sim.update_file("siliconflow", file_id, id="file-other")
    with pytest.raises(ValueError, match="page_size"):
        sim.set_page_size("siliconflow", 10)
    with pytest.raises(ValueError, match="times"):
        sim.inject("siliconflow", Fault.reset(), times=0)
    with pytest.raises(ValueError, match="keep"):
        Fault.truncated(keep=1.0)
    with pytest.raises(ValueError, match="path segment"):
        Account("a/b", "moonshot", "key")


def test_raw_items_are_served_verbatim(sim, client):
    odd = [{"id": 7, "bytes": "many"}, "not an object", None, {"id": "x", "created_at": 1.7e12}]
    sim.add_files("siliconflow", 2)
    sim.set_raw_items("moonshot", odd)
    sim.set_raw_items("siliconflow", odd)

    moonshot = items(list_files(client, sim, "moonshot"))
    siliconflow = items(list_files(client, sim, "siliconflow", {"purpose": "batch", "limit": 1}))
    sim.set_raw_items("siliconflow", None)

    assert moonshot == siliconflow == odd
    assert len(items(list_files(client, sim, "siliconflow"))) == 2


# --- Faults as the client sees them ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "keys", "code"),
    [
        (400, {"code", "message", "data"}, 20012),
        (429, {"message", "data"}, None),
        (503, {"code", "message", "data"}, 50505),
    ],
)
def test_siliconflow_json_errors(sim, client, status, keys, code):
    sim.inject("siliconflow", Fault.status(status))

    response = list_files(client, sim, "siliconflow")

    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.keys() == keys
    assert body.get("code") == code
    assert isinstance(body["message"], str)


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (401, "Invalid token"),
        (403, "Forbidden"),
        (404, "404 page not found"),
        (500, "Internal Server Error"),
        (504, "Gateway Timeout"),
    ],
)
def test_siliconflow_plain_text_errors(sim, client, status, text):
    sim.inject("siliconflow", Fault.status(status))

    response = list_files(client, sim, "siliconflow")

    assert (response.status_code, response.text) == (status, text)
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("status", "error_type", "expected_type"),
    [
        (400, None, "invalid_request_error"),
        (401, None, "invalid_authentication_error"),
        (403, None, "permission_denied_error"),
        (403, "exceeded_current_quota_error", "exceeded_current_quota_error"),
        (404, None, "resource_not_found_error"),
        (429, None, "rate_limit_reached_error"),
        (429, "engine_overloaded_error", "engine_overloaded_error"),
        (429, "exceeded_current_quota_error", "exceeded_current_quota_error"),
        (500, None, "server_error"),
    ],
)
def test_moonshot_errors(sim, client, status, error_type, expected_type):
    sim.inject("moonshot", Fault.status(status, error_type=error_type))

    response = list_files(client, sim, "moonshot")

    assert response.status_code == status
    error = response.json()["error"]
    assert error.keys() == {"type", "message"}
    assert error["type"] == expected_type
    assert error["message"]


def test_error_message_can_be_replaced(sim, client):
    sim.inject("siliconflow", Fault.status(504, message="upstream request timeout"))
    sim.inject("moonshot", Fault.status(400, message="bad"))

    assert list_files(client, sim, "siliconflow").text == "upstream request timeout"
    assert list_files(client, sim, "moonshot").json()["error"]["message"] == "bad"


@pytest.mark.parametrize("account", ["siliconflow", "moonshot"])
def test_retry_after_in_seconds_and_as_an_http_date(sim, client, account):
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    sim.inject(account, Fault.rate_limited(retry_after=2))
    sim.inject(account, Fault.status(503, retry_after=when))

    in_seconds = list_files(client, sim, account)
    as_date = list_files(client, sim, account)

    assert (in_seconds.status_code, in_seconds.headers["retry-after"]) == (429, "2")
    assert as_date.status_code == 503
    assert parsedate_to_datetime(as_date.headers["retry-after"]) == when


def test_custom_response(sim, client):
    sim.inject("moonshot", Fault.response(418, "short and stout", headers={"X-Teapot": "yes"}))
    sim.inject("moonshot", Fault.response(200, '{"data": 5}', content_type="application/json"))

    teapot = list_files(client, sim, "moonshot")
    odd_envelope = list_files(client, sim, "moonshot")

    assert (teapot.status_code, teapot.text, teapot.headers["x-teapot"]) == (
        418,
        "short and stout",
        "yes",
    )
    assert odd_envelope.json() == {"data": 5}


def test_html_page_instead_of_json(sim, client):
    sim.inject("siliconflow", Fault.html())

    response = list_files(client, sim, "siliconflow")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.parametrize("chunked", [False, True])
def test_truncated_body_is_a_json_prefix_then_a_protocol_error(sim, client, chunked):
    sim.add_files("moonshot", 20)
    full = list_files(client, sim, "moonshot").content
    sim.inject("moonshot", Fault.truncated(0.5, chunked=chunked))

    received, error = read_until_failure(client, sim, "moonshot")

    assert isinstance(error, httpx.RemoteProtocolError)
    assert 0 < len(received) < len(full)
    assert full.startswith(received)
    with pytest.raises(json.JSONDecodeError):
        json.loads(received)
    assert list_files(client, sim, "moonshot").content == full


def test_slow_response_arrives_late_or_times_the_client_out(sim, client):
    sim.inject("moonshot", Fault.slow(0.3), times=2)

    started = time.monotonic()
    response = list_files(client, sim, "moonshot")
    elapsed = time.monotonic() - started
    with pytest.raises(httpx.ReadTimeout):
        list_files(client, sim, "moonshot", timeout=0.05)

    assert response.status_code == 200
    assert elapsed >= 0.3


@pytest.mark.parametrize("chunked", [False, True])
def test_slow_drip_delivers_the_whole_body_slowly(sim, client, chunked):
    sim.add_files("moonshot", 3)
    full = list_files(client, sim, "moonshot").content
    pieces = -(-len(full) // 100)
    sim.inject("moonshot", Fault.drip(piece_size=100, delay=0.02, chunked=chunked))

    started = time.monotonic()
    response = list_files(client, sim, "moonshot")
    elapsed = time.monotonic() - started

    assert response.content == full
    assert ("transfer-encoding" in response.headers) is chunked
    assert elapsed >= (pieces - 1) * 0.02


def test_connection_reset_then_normal_service(sim, client):
    sim.inject("moonshot", Fault.reset())

    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        list_files(client, sim, "moonshot")
    assert list_files(client, sim, "moonshot").status_code == 200


def test_redirect_to_this_url_by_default_or_anywhere(sim, client):
    sim.inject("moonshot", Fault.redirect(), times=2)
    not_followed = list_files(client, sim, "moonshot")
    followed = list_files(client, sim, "moonshot", follow_redirects=True)
    sim.inject("moonshot", Fault.redirect("http://127.0.0.1:9/elsewhere", http_status=307))
    elsewhere = list_files(client, sim, "moonshot")

    assert not_followed.status_code == 302
    assert not_followed.headers["location"] == f"{sim.base_url('moonshot')}/files"
    assert followed.status_code == 200
    assert [step.status_code for step in followed.history] == [302]
    assert (elsewhere.status_code, elsewhere.headers["location"]) == (
        307,
        "http://127.0.0.1:9/elsewhere",
    )


def test_queued_faults_are_used_in_order_then_service_resumes(sim, client):
    sim.inject("siliconflow", Fault.status(503))
    sim.inject("siliconflow", Fault.rate_limited(), times=2)

    statuses = [list_files(client, sim, "siliconflow").status_code for _ in range(5)]

    assert statuses == [503, 429, 429, 200, 200]
    assert sim.request_count("siliconflow") == 5
    assert sim.request_count("moonshot") == 0


def test_persistent_fault_lasts_until_cleared_and_queued_faults_go_first(sim, client):
    sim.set_persistent_fault("moonshot", Fault.status(500))
    sim.inject("moonshot", Fault.rate_limited())

    during = [list_files(client, sim, "moonshot").status_code for _ in range(3)]
    other_account = list_files(client, sim, "siliconflow").status_code
    sim.set_persistent_fault("moonshot", None)
    after = list_files(client, sim, "moonshot").status_code

    assert during == [429, 500, 500]
    assert other_account == 200
    assert after == 200


# --- Scale, lifecycle, manual use --------------------------------------------------


def test_lists_100k_files(sim, client):
    moonshot_ids = sim.add_files("moonshot", 100_000)
    sim.add_files("siliconflow", 100_000)

    moonshot = items(list_files(client, sim, "moonshot"))
    siliconflow = items(
        list_files(client, sim, "siliconflow", {"purpose": "batch", "limit": 200_000})
    )
    sim.set_page_size("moonshot", 10_000)
    paged = list_files(client, sim, "moonshot", {"after": moonshot_ids[-10_001]}).json()

    assert [item["id"] for item in moonshot] == moonshot_ids
    assert len({item["id"] for item in siliconflow}) == 100_000
    assert (len(paged["data"]), paged["has_more"]) == (10_000, False)


def test_serving_writes_nothing_to_the_terminal(capfd):
    with Simulator() as sim, httpx.Client(timeout=5) as client:
        sim.inject("moonshot", Fault.reset())
        sim.inject("moonshot", Fault.slow(0.2))
        with pytest.raises(httpx.ReadError):
            list_files(client, sim, "moonshot")
        with pytest.raises(httpx.ReadTimeout):
            list_files(client, sim, "moonshot", timeout=0.05)
        time.sleep(0.3)  # the server's late answer now meets a closed connection
        client.post(f"{sim.base_url('moonshot')}/files")
        list_files(client, sim, "moonshot")

    assert capfd.readouterr() == ("", "")


def test_stop_hangs_up_and_frees_the_port():
    sim = Simulator().start()
    url = f"{sim.base_url('moonshot')}/files"
    with httpx.Client() as client:
        client.get(url)  # leaves a kept-alive connection open

        sim.stop()

        with pytest.raises(httpx.TransportError):
            client.get(url)
    sim.stop()
    with pytest.raises(RuntimeError, match="not running"):
        sim.base_url("moonshot")


def test_command_line_serves_and_stops_on_ctrl_c():
    command = [sys.executable, "-m", "syncer.simulator", "--port", "0", "--files", "3"]
    # The first change comes 2 s in: long after the listing below, even on a busy box.
    command += ["--step-seconds", "2", "--seed", "1"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        lines = 2 * len(DEFAULT_ACCOUNTS)  # a base URL and a key per account
        settings = dict(process.stdout.readline().strip().split("=", 1) for _ in range(lines))
        response = httpx.get(
            f"{settings['MOONSHOT_BASE_URL']}/files",
            headers={"Authorization": f"Bearer {settings['MOONSHOT_API_KEY']}"},
        )
        narration = process.stdout.readline()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)

    assert settings["SILICONFLOW_API_KEY"] == "sk-sim-siliconflow"
    assert len(response.json()["data"]) == 3
    assert narration.startswith(tuple(f"{account.name}: " for account in DEFAULT_ACCOUNTS))
    assert out.endswith("stopped\n")
    assert (process.returncode, err) == (0, "")
