"""Test doubles for Ollama and the Revenium metering API: real HTTP servers on 127.0.0.1.

    from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, SimulatedReply

    with OllamaSimulator() as sim, FakeMeteringAPI() as api:
        sim.reply = SimulatedReply(tokens=["Hello", " world"], prompt_eval_count=12)
        ...  # point OLLAMA_HOST at sim.host and REVENIUM_METERING_BASE_URL at api.url
        records = api.wait_for_records(1)

The simulator also answers Ollama's OpenAI-compatible API (`/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings`, `/v1/responses`, `/v1/models`) from the same replies, so
`openai.OpenAI(base_url=f"{sim.url}/v1/", api_key="ollama")` works against it.

Standard library and orjson only; both servers use ephemeral ports and stop without waiting on
clients.
"""

from ._fake_api import FakeMeteringAPI, Mode, ReceivedMetering
from ._reply import ReceivedRequest, SimulatedReply
from ._simulator import OllamaSimulator

__all__ = [
    "FakeMeteringAPI",
    "Mode",
    "OllamaSimulator",
    "ReceivedMetering",
    "ReceivedRequest",
    "SimulatedReply",
]
