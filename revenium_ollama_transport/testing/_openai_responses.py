"""Ollama's `/v1/responses` bodies: a port of ollama/ollama `openai/responses.go`.

`to_response` is `ToResponse` (a Go struct: fields in declaration order). `ResponsesStream` is
`ResponsesStreamConverter`: its events are Go `map[string]any`s, so `json.Marshal` writes their
keys sorted at every level (`go_map`), `sequence_number` counts every event from 0, and the
`response` objects are rebuilt (with a fresh `created_at`) for each event that carries one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from ._openai_bodies import Doc, tool_calls, unix_or_now
from ._wire import GoRaw, go_float, go_map

Event = tuple[str, Doc]  # (SSE event name, data)


def response_id() -> str:
    return f"resp_{random.randrange(999999)}"  # rand.Intn(999999)


def message_id() -> str:
    return f"msg_{random.randrange(999999)}"


@dataclass(frozen=True)
class _Echo:
    """The request fields a response object repeats (ResponsesRequest as Go decodes it)."""

    instructions: str
    truncation: str
    tools: list[Doc]
    text_format: Doc | None
    effort: str
    summary: str
    top_p: float | int
    temperature: float | int
    max_output_tokens: int | None
    background: bool

    @classmethod
    def of(cls, request: Doc) -> _Echo:
        def text(value: object) -> str:
            return value if isinstance(value, str) else ""

        def number(value: object) -> float | int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return 1  # the default of top_p and temperature
            return go_float(float(value))

        tools = request.get("tools")
        text_field = request.get("text")
        text_format = text_field.get("format") if isinstance(text_field, dict) else None
        reasoning = request.get("reasoning")
        reasoning = reasoning if isinstance(reasoning, dict) else {}
        max_tokens = request.get("max_output_tokens")
        truncation = request.get("truncation")
        return cls(
            instructions=text(request.get("instructions")),
            truncation=truncation if isinstance(truncation, str) else "disabled",
            tools=[t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else [],
            text_format=text_format if isinstance(text_format, dict) else None,
            effort=text(reasoning.get("effort")),
            summary=text(reasoning.get("summary")),
            top_p=number(request.get("top_p")),
            temperature=number(request.get("temperature")),
            max_output_tokens=max_tokens if type(max_tokens) is int else None,
            background=request.get("background") is True,
        )


def _tool(tool: Doc) -> Doc:
    """ResponsesTool{type, name, description, strict, parameters, tools(omitempty)}."""
    parameters, description, strict = (
        tool.get("parameters"),
        tool.get("description"),
        tool.get("strict"),
    )
    doc: Doc = {
        "type": str(tool.get("type") or ""),
        "name": str(tool.get("name") or ""),
        "description": description if isinstance(description, str) else None,
        "strict": strict if isinstance(strict, bool) else None,
        "parameters": go_map(parameters) if isinstance(parameters, dict) else None,
    }
    nested = tool.get("tools")
    if isinstance(nested, list) and nested:
        doc["tools"] = [_tool(t) for t in nested if isinstance(t, dict)]
    return doc


def _text_format(fmt: Doc) -> Doc:
    """ResponsesTextFormat{type, name, schema (a RawMessage), strict}, empty ones omitted."""
    doc: Doc = {"type": str(fmt.get("type") or "")}
    if fmt.get("name"):
        doc["name"] = str(fmt["name"])
    if "schema" in fmt:
        doc["schema"] = GoRaw(fmt["schema"])
    if isinstance(fmt.get("strict"), bool):
        doc["strict"] = fmt["strict"]
    return doc


def _usage(native: Doc) -> Doc:
    prompt = int(native.get("prompt_eval_count") or 0)
    output = int(native.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": 0},  # Ollama does not wire these through
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _output_text(text: str) -> Doc:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def to_response(model: str, resp_id: str, item_id: str, native: Doc, request: Doc) -> Doc:
    """ToResponse plus the `completed_at` the middleware stamps; `native` is the whole native
    chat answer. Tool calls replace the message item; thinking adds a reasoning item first."""
    echo = _Echo.of(request)
    message = native.get("message")
    message = message if isinstance(message, dict) else {}
    output: list[Doc] = []
    thinking = str(message.get("thinking") or "")
    if thinking:
        summary = [{"type": "summary_text", "text": thinking}]
        output.append(
            {
                "id": f"rs_{resp_id}",
                "type": "reasoning",
                "summary": summary,
                "encrypted_content": thinking,
            }
        )
    calls = tool_calls(message.get("tool_calls") or ())
    for index, call in enumerate(calls):
        item: Doc = {"id": f"fc_{resp_id}_{index}", "type": "function_call"}
        item["status"] = "completed"
        if call["id"]:
            item["call_id"] = call["id"]
        if call["function"]["name"]:
            item["name"] = call["function"]["name"]
        if call["function"]["arguments"]:
            item["arguments"] = call["function"]["arguments"]
        output.append(item)
    if not calls:
        content = _output_text(str(message.get("content") or ""))
        output.append(
            {
                "id": item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [content],
            }
        )
    reasoning: Doc | None = None
    if echo.effort or echo.summary:
        reasoning = {}
        if echo.effort:
            reasoning["effort"] = echo.effort
        if echo.summary:
            reasoning["summary"] = echo.summary
    return {
        "id": resp_id,
        "object": "response",
        "created_at": unix_or_now(native.get("created_at")),
        "completed_at": int(time.time()),
        "status": "completed",
        "incomplete_details": None,
        "model": model,
        "previous_response_id": None,
        "instructions": echo.instructions or None,
        "output": output,
        "error": None,
        "tools": [_tool(t) for t in echo.tools],
        "tool_choice": "auto",
        "truncation": echo.truncation,
        "parallel_tool_calls": True,
        "text": {"format": _text_format(echo.text_format or {"type": "text"})},
        "top_p": echo.top_p,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": echo.temperature,
        "reasoning": reasoning,
        "usage": _usage(native),
        "max_output_tokens": echo.max_output_tokens,
        "max_tool_calls": None,
        "store": False,
        "background": echo.background,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


class ResponsesStream:
    """ResponsesStreamConverter. For a plain answer the events are: response.created,
    response.in_progress, response.output_item.added, response.content_part.added, one
    response.output_text.delta per token, then on the done chunk response.output_text.done,
    response.content_part.done, response.output_item.done and response.completed (the only
    event with usage). No `[DONE]`. A native chunk with nothing in it (such as the `{"error"}`
    line of a failed stream) adds no event."""

    def __init__(self, resp_id: str, item_id: str, model: str, request: Doc) -> None:
        self._id = resp_id
        self._item_id = item_id
        self._model = model
        self._echo = _Echo.of(request)
        self._first_write = True
        self._output_index = 0
        self._content_started = False
        self._tool_calls_sent = False
        self._text = ""
        self._sequence = 0
        self._thinking = ""
        self._reasoning_id = ""
        self._reasoning_started = False
        self._completed_items: list[Doc] = []

    def step(self, native: Doc) -> list[Event]:
        """Process: the events Go emits for one native chunk."""
        message = native.get("message")
        message = message if isinstance(message, dict) else {}
        calls = message.get("tool_calls") or []
        thinking = str(message.get("thinking") or "")
        content = str(message.get("content") or "")
        events: list[Event] = []
        if self._first_write:
            self._first_write = False
            events.append(self._event("response.created", {"response": self._response()}))
            events.append(self._event("response.in_progress", {"response": self._response()}))
        if thinking:
            events += self._process_thinking(thinking)
        if calls:
            events += self._finish_reasoning()
            events += self._function_calls(calls)
            self._tool_calls_sent = True
        if not calls and not self._tool_calls_sent and content:
            events += self._process_text(content)
        if native.get("done") is True:
            events += self._completion(native)
        return events

    def _event(self, name: str, data: Doc) -> Event:
        data["type"] = name
        data["sequence_number"] = self._sequence
        self._sequence += 1
        return name, go_map(data)

    def _response(
        self, status: str = "in_progress", output: list[Doc] | None = None, usage: Doc | None = None
    ) -> Doc:
        """buildResponseObject (a map: key order does not matter before go_map sorts it)."""
        echo = self._echo
        text_format: Doc = {"type": "text"}
        if echo.text_format is not None:
            text_format = _text_format(echo.text_format)
        reasoning: Doc | None = None
        if echo.effort or echo.summary:
            reasoning = {"effort": echo.effort or None, "summary": echo.summary or None}
        tools = [
            {
                "type": t["type"],
                "name": t["name"],
                "description": t["description"],
                "strict": t["strict"],
                "parameters": t["parameters"],
            }
            for t in map(_tool, echo.tools)
        ]
        return {
            "id": self._id,
            "object": "response",
            "created_at": int(time.time()),
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": self._model,
            "previous_response_id": None,
            "instructions": echo.instructions or None,
            "output": output if output is not None else [],
            "error": None,
            "tools": tools,
            "tool_choice": "auto",
            "truncation": echo.truncation,
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": echo.top_p,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": echo.temperature,
            "reasoning": reasoning,
            "usage": usage,
            "max_output_tokens": echo.max_output_tokens,
            "max_tool_calls": None,
            "store": False,
            "background": echo.background,
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def _process_thinking(self, thinking: str) -> list[Event]:
        events: list[Event] = []
        if not self._reasoning_started:
            self._reasoning_started = True
            self._reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self._reasoning_id, "type": "reasoning", "summary": []}
            added = {"output_index": self._output_index, "item": item}
            events.append(self._event("response.output_item.added", added))
        self._thinking += thinking
        delta = {
            "item_id": self._reasoning_id,
            "output_index": self._output_index,
            "summary_index": 0,
            "delta": thinking,
        }
        events.append(self._event("response.reasoning_summary_text.delta", delta))
        return events

    def _finish_reasoning(self) -> list[Event]:
        if not self._reasoning_started:
            return []
        item_id, thinking, index = self._reasoning_id, self._thinking, self._output_index
        item: Doc = {
            "id": item_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": thinking}],
            "encrypted_content": thinking,
        }
        self._completed_items.append(item)
        self._thinking = self._reasoning_id = ""
        self._reasoning_started = False
        self._output_index += 1
        done = {"item_id": item_id, "output_index": index, "summary_index": 0, "text": thinking}
        return [
            self._event("response.reasoning_summary_text.done", done),
            self._event("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _function_calls(self, calls: Any) -> list[Event]:
        """emitFunctionCallEvents: four events per call, at output_index + i (Go does not move
        past a message item that is still open)."""
        events: list[Event] = []
        converted = tool_calls(calls)
        for i, call in enumerate(converted):
            index = self._output_index + i
            item_id = f"fc_{random.randrange(999999)}_{i}"
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            item: Doc = {
                "id": item_id,
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"],
                "name": name,
                "arguments": arguments,
            }
            self._completed_items.append(item)
            opened = item | {"status": "in_progress", "arguments": ""}
            events += [
                self._event("response.output_item.added", {"output_index": index, "item": opened}),
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": item_id, "output_index": index, "delta": arguments},
                ),
                self._event(
                    "response.function_call_arguments.done",
                    {"item_id": item_id, "output_index": index, "arguments": arguments},
                ),
                self._event("response.output_item.done", {"output_index": index, "item": item}),
            ]
        self._output_index += len(converted)
        return events

    def _process_text(self, content: str) -> list[Event]:
        events = self._finish_reasoning()
        index = self._output_index
        if not self._content_started:
            self._content_started = True
            item = {
                "id": self._item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events.append(
                self._event("response.output_item.added", {"output_index": index, "item": item})
            )
            part = {
                "item_id": self._item_id,
                "output_index": index,
                "content_index": 0,
                "part": _output_text(""),
            }
            events.append(self._event("response.content_part.added", part))
        self._text += content
        delta = {
            "item_id": self._item_id,
            "output_index": index,
            "content_index": 0,
            "delta": content,
            "logprobs": [],
        }
        events.append(self._event("response.output_text.delta", delta))
        return events

    def _message_item(self) -> Doc:
        return {
            "id": self._item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [_output_text(self._text)],
        }

    def _completion(self, native: Doc) -> list[Event]:
        """processCompletion: close the open items, then response.completed with the usage."""
        events = self._finish_reasoning()
        index = self._output_index
        if not self._tool_calls_sent and self._content_started:
            text = self._text
            done = {
                "item_id": self._item_id,
                "output_index": index,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            }
            part = {
                "item_id": self._item_id,
                "output_index": index,
                "content_index": 0,
                "part": _output_text(text),
            }
            item = {"output_index": index, "item": self._message_item()}
            events += [
                self._event("response.output_text.done", done),
                self._event("response.content_part.done", part),
                self._event("response.output_item.done", item),
            ]
        output = list(self._completed_items)
        if self._content_started:
            output.append(self._message_item())
        response = self._response("completed", output, _usage(native))
        response["completed_at"] = int(time.time())
        events.append(self._event("response.completed", {"response": response}))
        return events
