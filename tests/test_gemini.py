"""Gemini specifics: its documented item and error shapes read exactly as documented
(shared/provider-apis/gemini.md); the provider matrix covers the rest."""

from __future__ import annotations

from datetime import UTC, datetime

from syncer.model import StatusClass
from syncer.providers import gemini
from syncer.providers.items import parse_items

EXAMPLE = {
    "files": [
        {
            "name": "files/abc-123",
            "displayName": "report.pdf",
            "mimeType": "application/pdf",
            "sizeBytes": "1048576",
            "createTime": "2026-05-01T10:00:00.123456789Z",
            "expirationTime": "2026-05-03T10:00:00.123456Z",
            "state": "ACTIVE",
        },
        {
            "name": "files/def-456",
            "mimeType": "video/mp4",
            "sizeBytes": "73400320",
            "createTime": "2026-05-01T10:05:00Z",
            "state": "FAILED",
            "error": {"code": 3, "message": "The video could not be processed."},
        },
        {"name": "files/ghi-789", "sizeBytes": 12, "createTime": "2026-05-01T10:06:00Z"},
    ],
    "nextPageToken": "CiAKGjBpNDd2Nmp2Zml2cXRqbDBm",
}


def test_documented_items_read_as_documented():
    parsed = parse_items(EXAMPLE["files"], gemini.ITEMS)

    active, failed, bare = parsed.files
    assert parsed.skipped == 0
    assert (active.file_id, active.filename, active.purpose, active.bytes) == (
        "files/abc-123",
        "report.pdf",
        "application/pdf",
        1_048_576,
    )
    assert active.created_at == datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert active.expires_at == datetime(2026, 5, 3, 10, 0, 0, 123456, tzinfo=UTC)
    assert (active.status, active.status_class) == ("ACTIVE", StatusClass.READY)
    assert (failed.filename, failed.status_class) == ("", StatusClass.FAILED)
    assert failed.status_details == "The video could not be processed."
    assert failed.expires_at is None
    assert (bare.status, bare.status_class, bare.bytes) == (None, StatusClass.UNKNOWN, 12)


def test_processing_is_pending_and_a_size_that_is_not_a_number_is_unusable():
    item = {**EXAMPLE["files"][0], "state": "PROCESSING"}
    bad = {**EXAMPLE["files"][0], "name": "files/x", "sizeBytes": "12 MB"}

    parsed = parse_items([item, bad], gemini.ITEMS)

    assert [f.status_class for f in parsed.files] == [StatusClass.PENDING]
    assert parsed.skipped == 1
    assert "sizeBytes is a string '12 MB', not a whole number" in parsed.problems[0]


def test_errors_are_classified_by_details_then_status():
    bad_key = gemini.read_error(
        b'{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",'
        b' "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",'
        b' "reason": "API_KEY_INVALID"}]}}'
    )
    per_minute = gemini.read_error(
        b'{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED",'
        b' "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",'
        b' "retryDelay": "22s"}]}}'
    )
    per_day = gemini.read_error(
        b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",'
        b' "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations":'
        b' [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}'
    )
    outage = gemini.read_error(
        b'{"error":{"message":"","code":503,"status":"Service Unavailable"}}'
    )

    assert (bad_key.kind, bad_key.retryable) == ("API_KEY_INVALID", False)
    assert (per_minute.retryable, per_minute.retry_after) == (True, 22.0)
    assert per_day.retryable is False
    assert outage.retryable is None  # a non-canonical status: the HTTP status decides (retry)


def test_the_key_travels_in_its_own_header_never_the_url():
    assert gemini.auth_headers("k-123") == {"x-goog-api-key": "k-123"}
