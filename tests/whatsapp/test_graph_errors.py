"""The one Graph error table: codes -> exception classes -> retry classes."""

from __future__ import annotations

import pytest

from bot.core.messages import ErrorInfo
from bot.errors import ChannelError
from bot.whatsapp import graph_errors as ge
from bot.whatsapp.graph_errors import RetryClass


@pytest.mark.parametrize(("code", "cls", "retry"), [
    (1, ge.TransientGraphError, RetryClass.TRANSIENT),
    (2, ge.TransientGraphError, RetryClass.TRANSIENT),
    (131000, ge.TransientGraphError, RetryClass.TRANSIENT),
    (131016, ge.TransientGraphError, RetryClass.TRANSIENT),
    (130429, ge.ThroughputExceeded, RetryClass.RATE_LIMITED),
    (131056, ge.PairRateLimited, RetryClass.RATE_LIMITED),
    (4, ge.AppRateLimited, RetryClass.RATE_LIMITED),
    (80007, ge.AppRateLimited, RetryClass.RATE_LIMITED),
    (131048, ge.SpamRateLimited, RetryClass.RATE_LIMITED),
    (131049, ge.MarketingCapReached, RetryClass.RATE_LIMITED),
    (131057, ge.MaintenanceMode, RetryClass.RATE_LIMITED),
    (100, ge.InvalidRequest, RetryClass.PERMANENT),
    (131008, ge.InvalidRequest, RetryClass.PERMANENT),
    (131009, ge.InvalidRequest, RetryClass.PERMANENT),
    (131051, ge.InvalidRequest, RetryClass.PERMANENT),
    (131026, ge.Undeliverable, RetryClass.PERMANENT),
    (132000, ge.TemplateProblem, RetryClass.PERMANENT),
    (132001, ge.TemplateProblem, RetryClass.PERMANENT),
    (132015, ge.TemplateProblem, RetryClass.PERMANENT),
    (190, ge.AuthError, RetryClass.PERMANENT),
    (0, ge.AuthError, RetryClass.PERMANENT),
    (250, ge.AccountProblem, RetryClass.PERMANENT),
    (368, ge.AccountProblem, RetryClass.PERMANENT),
    (131050, ge.ConsentRefused, RetryClass.CONSENT),
    (131047, ge.WindowClosed, RetryClass.WINDOW),
])
def test_table(code: int, cls: type[ge.GraphError], retry: RetryClass) -> None:
    assert ge.error_class(code) is cls
    assert ge.classify(code) is retry
    err = ge.build(code, "msg")
    assert isinstance(err, cls) and isinstance(err, ChannelError)
    assert err.retry is retry and err.code == code


def test_every_code_is_in_exactly_one_row() -> None:
    seen: dict[int, str] = {}
    for rule in ge.TABLE:
        for code in rule.codes:
            assert code not in seen, f"{code} in {seen[code]} and {rule.meaning}"
            seen[code] = rule.meaning
    assert ge.AccountProblem.operator_action and not ge.InvalidRequest.operator_action


def test_unknown_codes_are_permanent_unless_5xx() -> None:
    assert ge.classify(999999) is RetryClass.PERMANENT
    assert ge.classify(999999, http_status=502) is RetryClass.TRANSIENT


def test_from_response_keeps_everything_meta_said() -> None:
    body = {"error": {"message": "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                      "type": "OAuthException", "code": 131056,
                      "error_data": {"messaging_product": "whatsapp", "details": "too many to one user"},
                      "error_subcode": 2494055, "fbtrace_id": "AbCdEfFAKE123"}}
    err = ge.from_response(400, body)
    assert isinstance(err, ge.PairRateLimited)
    assert (err.code, err.subcode, err.fbtrace_id, err.details, err.http_status) == (
        131056, 2494055, "AbCdEfFAKE123", "too many to one user", 400)
    assert "fbtrace_id AbCdEfFAKE123" in str(err)


def test_from_response_without_a_graph_body() -> None:
    assert isinstance(ge.from_response(502, None), ge.TransientGraphError)
    assert isinstance(ge.from_response(400, {"oops": 1}), ge.PermanentGraphError)
    odd = ge.from_response(500, {"error": {"code": 777, "is_transient": True}})
    assert odd.retry is RetryClass.TRANSIENT
    flagged = ge.from_response(400, {"error": {"code": 778, "is_transient": True}})
    assert flagged.retry is RetryClass.TRANSIENT
    assert ge.build(1).max_retries == 3 and ge.build(2).max_retries is None


def test_async_failures_use_the_same_table() -> None:
    err = ge.from_error_info(ErrorInfo(code=131050, title="stopped", details="d"))
    assert isinstance(err, ge.ConsentRefused) and err.http_status == 0 and err.details == "d"
