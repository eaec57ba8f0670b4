"""Settings from the environment and configure(); base URL normalisation."""

from __future__ import annotations

import logging

import pytest

from revenium_ollama_transport import _config


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://api.revenium.ai", "https://api.revenium.ai/meter"),
        ("https://api.revenium.ai/", "https://api.revenium.ai/meter"),
        ("https://api.revenium.ai/meter", "https://api.revenium.ai/meter"),
        ("https://api.revenium.ai/meter/", "https://api.revenium.ai/meter"),
        ("https://api.revenium.ai/meter/v2/ai/completions", "https://api.revenium.ai/meter"),
        ("https://api.revenium.ai/meter/v2/meter/x", "https://api.revenium.ai/meter/v2/meter"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/meter"),
        ("https://gw.example.com/revenium", "https://gw.example.com/revenium/meter"),
        ("  https://api.revenium.ai  ", "https://api.revenium.ai/meter"),
        ("http://[::1]:8080/", "http://[::1]:8080/meter"),
    ],
)
def test_base_url_normalised(raw: str, expected: str) -> None:
    assert _config.normalise_base_url(raw) == (expected, None)


def test_query_string_is_dropped_with_a_problem() -> None:
    base, problem = _config.normalise_base_url("https://api.revenium.ai/meter?x=1#frag")
    assert base == "https://api.revenium.ai/meter"
    assert problem is not None
    assert "query string dropped" in problem


@pytest.mark.parametrize(
    "raw", ["api.revenium.ai", "ftp://api.revenium.ai", "https://", "http://host:notaport", "x"]
)
def test_unusable_base_url(raw: str) -> None:
    base, problem = _config.normalise_base_url(raw)
    assert base is None
    assert problem is not None
    assert "REVENIUM_METERING_BASE_URL" in problem


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVENIUM_METERING_API_KEY", " hak_abc ")
    monkeypatch.setenv("REVENIUM_METERING_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("REVENIUM_SHUTDOWN_TIMEOUT", "2.5")
    settings = _config.from_environment()
    assert settings.api_key == "hak_abc"
    assert settings.endpoint == "http://127.0.0.1:9/meter/v2/ai/completions"
    assert settings.shutdown_timeout == 2.5
    assert "hak_abc" not in repr(settings)


def test_bad_environment_values_are_logged_once_and_defaulted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REVENIUM_METERING_BASE_URL", "not a url")
    monkeypatch.setenv("REVENIUM_SHUTDOWN_TIMEOUT", "soon")
    with caplog.at_level(logging.WARNING, logger="revenium_ollama_transport"):
        settings = _config.from_environment()
    assert settings.base_url is None
    assert settings.shutdown_timeout == _config.Settings.shutdown_timeout
    messages = [r.getMessage() for r in caplog.records]
    assert any("REVENIUM_METERING_BASE_URL" in m and "not a url" in m for m in messages)
    assert any("REVENIUM_SHUTDOWN_TIMEOUT" in m for m in messages)


def test_configure_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVENIUM_METERING_API_KEY", "hak_env")
    try:
        _config.set_overrides(api_key="hak_code", base_url="https://api.revenium.ai")
        settings = _config.current()
        assert settings.api_key == "hak_code"
        assert settings.base_url == "https://api.revenium.ai/meter"
    finally:
        _config.clear_overrides()
    assert _config.current().api_key == "hak_env"


def test_configure_rejects_unknown_names() -> None:
    with pytest.raises(TypeError, match="unknown settings: colour"):
        _config.set_overrides(colour="blue")


def test_configure_reset_lets_the_environment_rule_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import revenium_ollama_transport as metering

    monkeypatch.setenv("REVENIUM_METERING_API_KEY", "hak_env")
    metering.configure(api_key="hak_code", max_attempts=2)
    assert (_config.current().api_key, _config.current().max_attempts) == ("hak_code", 2)
    metering.configure(reset=True, max_attempts=3)
    assert (_config.current().api_key, _config.current().max_attempts) == ("hak_env", 3)
    metering.configure(reset=True)
    assert _config.current().max_attempts == _config.Settings.max_attempts
