"""Metadata: the with-block across threads and tasks, key mapping, bad values dropped."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from revenium_ollama_transport import _metadata, usage_metadata
from revenium_ollama_transport._metadata import current_layers, resolve

from ._upstream import UPSTREAM_METADATA

UPSTREAM_EXAMPLE = {
    **UPSTREAM_METADATA,
    "response_quality_score": 0.9,
    "environment": "production",
    "region": "us-east-1",
    "credential_alias": "prod-ollama-key",
    "trace_type": "customer-support",
    "trace_name": "Customer Support Chat",
    "parent_transaction_id": "parent-1",
    "transaction_name": "Generate Response",
}


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _metadata._warned.clear()


def test_upstream_example_maps_to_wire_names() -> None:
    assert resolve([UPSTREAM_EXAMPLE]) == {
        "traceId": "conv-28a7e9d4",
        "taskType": "summarize-customer-issue",
        "subscriber": {
            "id": "subscriberid-1234567890",
            "email": "user@example.com",
            "credential": {"name": "engineering-api-key", "value": "sk-1234567890abcdef"},
        },
        "organizationName": "acme-corp",
        "subscriptionId": "startup-plan-Q1",
        "productName": "saas-app-gold-tier",
        "agent": "support-agent",
        "responseQualityScore": 0.9,
        "environment": "production",
        "region": "us-east-1",
        "credentialAlias": "prod-ollama-key",
        "traceType": "customer-support",
        "traceName": "Customer Support Chat",
        "parentTransactionId": "parent-1",
        "transactionName": "Generate Response",
    }


def test_nested_blocks_merge_inner_wins() -> None:
    with usage_metadata({"trace_id": "outer", "agent": "a", "subscriber": {"id": "u1"}}):
        with usage_metadata(trace_id="inner", subscriber={"email": "e@x.io"}):
            fields = resolve(current_layers())
        after_inner = resolve(current_layers())
    assert fields == {
        "traceId": "inner",
        "agent": "a",
        "subscriber": {"id": "u1", "email": "e@x.io"},
    }
    assert after_inner == {"traceId": "outer", "agent": "a", "subscriber": {"id": "u1"}}
    assert current_layers() == ()


def test_blocks_do_not_leak_between_threads() -> None:
    seen: dict[int, dict[str, Any]] = {}
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        with usage_metadata(trace_id=f"t{i}"):
            barrier.wait(5)
            seen[i] = resolve(current_layers())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert seen == {i: {"traceId": f"t{i}"} for i in range(8)}


async def test_blocks_do_not_leak_between_tasks() -> None:
    gate = asyncio.Event()

    async def work(i: int) -> dict[str, Any]:
        async with usage_metadata(trace_id=f"t{i}"):
            await gate.wait()
            return resolve(current_layers())

    tasks = [asyncio.create_task(work(i)) for i in range(20)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert results == [{"traceId": f"t{i}"} for i in range(20)]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"organization_name": "o"}, {"organizationName": "o"}),
        ({"organizationName": "o"}, {"organizationName": "o"}),
        ({"product_name": "p"}, {"productName": "p"}),
        ({"traceId": "t"}, {"traceId": "t"}),
        ({"subscriber_id": "u"}, {"subscriber": {"id": "u"}}),
        ({"subscriber_email": "e"}, {"subscriber": {"email": "e"}}),
        ({"subscriber_credential_name": "n"}, {"subscriber": {"credential": {"name": "n"}}}),
        ({"subscriber_credential": "v"}, {"subscriber": {"credential": {"value": "v"}}}),
        ({"retry_number": 2}, {"retryNumber": 2}),
        ({"trace_id": None}, {}),
    ],
)
def test_aliases(given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert resolve([given]) == expected


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"trace_id": 123}, "trace_id"),
        ({"organization_id": ["a"]}, "organization_id"),
        ({"response_quality_score": "high"}, "response_quality_score"),
        ({"response_quality_score": 1.5}, "response_quality_score"),
        ({"response_quality_score": float("nan")}, "response_quality_score"),
        ({"response_quality_score": True}, "response_quality_score"),
        ({"retry_number": -1}, "retry_number"),
        ({"retry_number": 1.5}, "retry_number"),
        ({"trace_type": "has space"}, "trace_type"),
        ({"subscriber": "u-1"}, "subscriber"),
        ({"subscriber": {"id": 5}}, "subscriber.id"),
    ],
)
def test_wrong_values_are_dropped_with_one_warning(
    given: dict[str, Any], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="revenium_ollama_transport"):
        assert resolve([given]) == {}
        assert resolve([given]) == {}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert repr(field) in warnings[0]


def test_over_long_text_is_cut_to_the_server_cap(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="revenium_ollama_transport"):
        fields = resolve(
            [{"trace_id": "x" * 300, "product_id": "p" * 300, "trace_name": "n" * 300}]
        )
    assert fields == {"traceId": "x" * 255, "productName": "p" * 224, "traceName": "n" * 256}
    assert len(caplog.records) == 3


def test_unknown_key_is_warned_once_listing_accepted_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="revenium_ollama_transport"):
        assert resolve([{"colour": "blue"}, {"colour": "red"}]) == {}
    [record] = caplog.records
    assert "'colour'" in record.getMessage()
    assert "trace_id" in record.getMessage()


def test_credential_value_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-very-secret-value"
    with caplog.at_level(logging.DEBUG, logger="revenium_ollama_transport"):
        resolve([{"subscriber": {"credential": {"value": secret, "colour": 1}, "x": 2}}])
        resolve([{"subscriber_credential": secret * 20}])
    assert caplog.records
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_not_a_mapping_is_warned_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="revenium_ollama_transport"):
        with usage_metadata(["trace_id"]):  # type: ignore[arg-type]
            assert resolve(current_layers()) == {}
    assert "must be a mapping" in caplog.records[0].getMessage()


ENV_FALLBACKS = [
    ("REVENIUM_ENVIRONMENT", "environment", "production"),
    ("ENVIRONMENT", "environment", "staging"),
    ("DEPLOYMENT_ENV", "environment", "dev"),
    ("REVENIUM_REGION", "region", "us-east-1"),
    ("AWS_REGION", "region", "eu-west-1"),
    ("AWS_DEFAULT_REGION", "region", "eu-west-2"),
    ("AZURE_REGION", "region", "eastus"),
    ("GCP_REGION", "region", "europe-west4"),
    ("GOOGLE_CLOUD_REGION", "region", "asia-east1"),
    ("REVENIUM_CREDENTIAL_ALIAS", "credentialAlias", "prod-ollama-key"),
    ("REVENIUM_TRACE_TYPE", "traceType", "customer-support"),
    ("REVENIUM_TRACE_NAME", "traceName", "Support Chat"),
    ("REVENIUM_PARENT_TRANSACTION_ID", "parentTransactionId", "parent-9"),
    ("REVENIUM_TRANSACTION_NAME", "transactionName", "Generate Response"),
    ("REVENIUM_RETRY_NUMBER", "retryNumber", 3),
]
ALL_ENV_NAMES = [name for name, _, _ in ENV_FALLBACKS]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("variable", "wire", "value"), ENV_FALLBACKS)
def test_environment_fallbacks(
    clean_env: pytest.MonkeyPatch, variable: str, wire: str, value: object
) -> None:
    clean_env.setenv(variable, str(value))
    assert resolve([_metadata.environment_layer()]) == {wire: value}


def test_first_variable_set_wins_and_calls_win_over_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("AWS_REGION", "eu-west-1")
    clean_env.setenv("REVENIUM_REGION", "us-east-1")
    clean_env.setenv("DEPLOYMENT_ENV", "dev")
    clean_env.setenv("ENVIRONMENT", "  ")  # blank counts as unset
    fields = resolve([_metadata.environment_layer(), {"environment": "from-call"}])
    assert fields == {"region": "us-east-1", "environment": "from-call"}


def test_bad_environment_value_is_warned_and_dropped(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("REVENIUM_RETRY_NUMBER", "two")
    clean_env.setenv("REVENIUM_TRACE_TYPE", "has spaces")
    with caplog.at_level(logging.WARNING, logger="revenium_ollama_transport"):
        assert resolve([_metadata.environment_layer()]) == {}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'retry_number'" in messages
    assert "'trace_type'" in messages


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"trace_id": 123}, "trace_id"),
        ({"response_quality_score": 1.5}, "response_quality_score"),
        ({"retry_number": -1}, "retry_number"),
        ({"trace_type": "has space"}, "trace_type"),
        ({"subscriber": {"id": 5}}, "subscriber.id"),
        ({"colour": "blue"}, "colour"),
        ({"trace_id": "x" * 300}, "trace_id"),
    ],
)
def test_strict_mode_raises_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], named: str
) -> None:
    monkeypatch.setenv("REVENIUM_STRICT_METADATA", "true")
    with pytest.raises(_metadata.MetadataError, match=repr(named)):
        _metadata.check(given)
    with pytest.raises(ValueError, match=repr(named)):
        usage_metadata(given)
    monkeypatch.setenv("REVENIUM_STRICT_METADATA", "false")
    _metadata.check(given)  # warnings only, outside strict mode


def test_strict_mode_refuses_a_non_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVENIUM_STRICT_METADATA", "yes")
    with pytest.raises(_metadata.MetadataError, match="mapping"):
        _metadata.as_layer(["trace_id"])
    assert _metadata.as_layer({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    ("raw", "layer"),
    [('{"trace_id": "t"}', {"trace_id": "t"}), ("[1]", {}), ("not json", {}), ("", {})],
)
def test_header_layer(raw: str, layer: dict[str, Any]) -> None:
    assert _metadata.header_layer(raw) == layer
