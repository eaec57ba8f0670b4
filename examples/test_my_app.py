"""Testing your own app's metering: pytest with the package's Ollama simulator and fake API.

Your tests should check that each of your app's calls is metered and attributed to the
right customer, product and task, without a running Ollama and without sending test
records to Revenium. `revenium_ollama_transport.testing` has both doubles, as real HTTP
servers on 127.0.0.1:

- `OllamaSimulator` answers like Ollama (set its `reply`, or `queue()` several, with
  `SimulatedReply`: tokens, token counts, an error status...);
- `FakeMeteringAPI` accepts records as Revenium's metering API does, validates them, and
  keeps them in `records`.

`configure(api_key=..., base_url=api.url)` sends the session's records to the fake API;
`flush()` waits until they are delivered. Metadata strict mode
(`REVENIUM_STRICT_METADATA=true`) makes a misspelt metadata key fail the test instead of
being dropped with a warning.

No Ollama and no Revenium key are needed:

    pytest examples/test_my_app.py
"""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import pytest

import revenium_ollama_transport
from revenium_ollama_transport import MetadataError, usage_metadata
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

# --- the app under test (in your project, imported from your package) -----------------


class SupportBot:
    """Answers customers' questions; each answer is attributed to the customer."""

    MODEL = "qwen2.5:0.5b"

    def __init__(self, client: ollama.Client) -> None:
        self._client = client

    def answer(self, organization: str, email: str, question: str) -> str:
        with usage_metadata(
            organization_id=organization,
            subscriber={"email": email},
            product_id="support-bot",
            task_type="answer-question",
        ):
            response = self._client.chat(
                model=self.MODEL, messages=[{"role": "user", "content": question}]
            )
        return response.message.content or ""

    def stream_answer(self, organization: str, question: str) -> Iterator[str]:
        with usage_metadata(organization_id=organization, task_type="answer-streamed"):
            # A stream's request leaves at its first chunk: the block must still be open.
            for chunk in self._client.chat(
                model=self.MODEL, messages=[{"role": "user", "content": question}], stream=True
            ):
                yield chunk.message.content or ""


# --- fixtures ----------------------------------------------------------------------------

API_KEY = "hak_test_key"


@pytest.fixture(scope="session", autouse=True)
def metering_api() -> Iterator[FakeMeteringAPI]:
    """One fake metering API for the whole session, used by every test (autouse): no
    test's record ever reaches Revenium, whatever the environment says."""
    with FakeMeteringAPI(expected_api_key=API_KEY) as api:
        revenium_ollama_transport.configure(api_key=API_KEY, base_url=api.url)
        yield api
        revenium_ollama_transport.flush()


@pytest.fixture
def metered(
    metering_api: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeMeteringAPI]:
    """The fake API, emptied of earlier tests' records; metadata mistakes raise."""
    assert revenium_ollama_transport.flush()
    metering_api.clear()
    monkeypatch.setenv("REVENIUM_STRICT_METADATA", "true")
    yield metering_api


@pytest.fixture
def sim() -> Iterator[OllamaSimulator]:
    with OllamaSimulator() as simulator:
        yield simulator


@pytest.fixture
def bot(sim: OllamaSimulator) -> SupportBot:
    # Metered because revenium_ollama_transport was imported before the client was made.
    return SupportBot(ollama.Client(host=sim.url))


# --- tests -------------------------------------------------------------------------------


def test_an_answer_is_metered_for_its_customer(
    bot: SupportBot, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["Five", " days", "."], prompt_eval_count=12)

    assert bot.answer("acme-corp", "ann@acme.example", "How long do refunds take?") == (
        "Five days."
    )

    assert revenium_ollama_transport.flush()
    [record] = metered.records
    assert record["operationType"] == "CHAT"
    assert record["isStreamed"] is False
    assert (record["inputTokenCount"], record["outputTokenCount"]) == (12, 3)
    assert record["organizationName"] == "acme-corp"
    assert record["subscriber"] == {"email": "ann@acme.example"}
    assert record["productName"] == "support-bot"
    assert record["taskType"] == "answer-question"
    # The metadata went to the metering record only, never to Ollama.
    [request] = sim.requests
    assert b"acme-corp" not in request.body


def test_a_streamed_answer_is_one_record(
    bot: SupportBot, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(tokens=["Yes", ",", " we", " do", "."])

    assert "".join(bot.stream_answer("globex", "Do you ship abroad?")) == "Yes, we do."

    assert revenium_ollama_transport.flush()
    [record] = metered.records
    assert record["isStreamed"] is True
    assert record["outputTokenCount"] == 5
    assert record["organizationName"] == "globex"
    assert record["taskType"] == "answer-streamed"
    assert record["stopReason"] == "END"


def test_each_customer_gets_their_own_records(
    bot: SupportBot, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    for organization in ("acme-corp", "globex", "acme-corp"):
        bot.answer(organization, f"someone@{organization}.example", "Hello?")

    assert revenium_ollama_transport.flush()
    organizations = [record["organizationName"] for record in metered.records]
    assert sorted(organizations) == ["acme-corp", "acme-corp", "globex"]


def test_a_failed_call_is_metered_as_an_error(
    bot: SupportBot, sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    sim.reply = SimulatedReply(status=503, error="server busy")

    with pytest.raises(ollama.ResponseError):
        bot.answer("acme-corp", "ann@acme.example", "Are you there?")

    assert revenium_ollama_transport.flush()
    [record] = metered.records
    assert record["stopReason"] == "ERROR"
    assert record["errorCode"] == 503
    assert record["errorReason"] == "server busy"
    assert record["organizationName"] == "acme-corp"


def test_a_misspelt_metadata_key_fails_in_strict_mode(metered: FakeMeteringAPI) -> None:
    # Without strict mode the unknown key would be dropped with a warning.
    with pytest.raises(MetadataError, match="organisation_id"):
        usage_metadata(organisation_id="acme-corp")
