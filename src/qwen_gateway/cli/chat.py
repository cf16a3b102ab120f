"""``qwen-gateway chat``: a terminal chat against a local or remote gateway.

A client of the OpenAI-compatible API only (httpx, streamed SSE): it never imports the server.
Input is read with prompt-toolkit (Enter sends, Alt-Enter or Esc Enter inserts a newline,
history kept in a file), answers are streamed with rich and shown as Markdown once complete
when they fit on the screen. Ctrl-C during an answer closes the HTTP stream (the gateway stops
generating) and keeps the session; Ctrl-C or Ctrl-D at the prompt leaves.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

DEFAULT_URL = "http://127.0.0.1:8000/v1"
KEY_ENV = "QWEN_GATEWAY_KEY"
HELP = """\
Enter sends; Alt-Enter (or Esc then Enter) starts a new line. Ctrl-C stops an answer;
Ctrl-C or Ctrl-D at the prompt leaves.

  /model [NAME]    show the model and those served, or switch to NAME
  /system [TEXT]   show the system prompt, or set it (/system - removes it)
  /clear           forget the conversation (the system prompt stays)
  /save FILE       write the conversation to FILE as JSON (OpenAI messages)
  /load FILE       read a conversation written by /save
  /help            this text
  /quit            leave"""

# Model output is untrusted: no terminal control sequence from it reaches the terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MARKDOWN = re.compile(r"(^|\n)\s*(```|#{1,6} |[-*+] |\d+\. |\|.*\|)|\*\*[^*\n]+\*\*|`[^`\n]+`")


def clean(text: str) -> str:
    """``text`` without control characters (tabs and newlines kept)."""
    return _CONTROL.sub("", text)


class ChatError(Exception):
    """A failed request, as the one line shown to the user."""


@dataclass
class Answer:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    started: float = 0.0
    first_token: float | None = None
    ended: float = 0.0
    stopped: bool = False  # by Ctrl-C

    def stats(self) -> str:
        parts = []
        if self.prompt_tokens is not None and self.completion_tokens is not None:
            parts.append(
                f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens"
            )
        if self.first_token is not None:
            parts.append(f"TTFT {self.first_token - self.started:.2f} s")
            span = self.ended - self.first_token
            if self.completion_tokens and span > 0:
                parts.append(f"{self.completion_tokens / span:.1f} tokens/s")
        return " · ".join(parts)


def _error_line(response: httpx.Response) -> str:
    """``Error 401 (invalid_api_key): message`` from OpenAI's error envelope."""
    try:
        body = json.loads(response.read())
        error = body["error"]
        message = str(error.get("message") or "")
        code = error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = response.text[:200].strip(), None
    label = f"Error {response.status_code}" + (f" ({code})" if code else "")
    retry = response.headers.get("retry-after")
    tail = f" Retry after {retry} s." if retry else ""
    return clean(f"{label}: {message or response.reason_phrase}{tail}")


class Gateway:
    """The two calls the chat makes: the models, and a streamed chat completion."""

    def __init__(self, url: str, key: str | None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self._http.build_request(method, self.url + path, **kwargs)
        try:
            return self._http.send(request, stream=True)
        except httpx.ConnectError as exc:
            raise ChatError(f"Cannot connect to {self.url}: {exc}") from None
        except httpx.TimeoutException:
            raise ChatError(f"{self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ChatError(f"Request to {self.url} failed: {exc}") from None

    def models(self) -> list[str]:
        response = self._send("GET", "/models")
        try:
            if response.status_code != 200:
                raise ChatError(_error_line(response))
            try:
                return [  # embedding models cannot chat
                    str(m["id"])
                    for m in json.loads(response.read())["data"]
                    if not (m.get("capabilities") or {}).get("embeddings")
                ]
            except (ValueError, KeyError, TypeError) as exc:
                raise ChatError(f"Unexpected /models answer from {self.url}: {exc}") from None
        finally:
            response.close()

    def stream(self, body: dict[str, Any], answer: Answer) -> Generator[str, None, None]:
        """Text deltas of one streamed answer; fills in ``answer``. Closing the generator (or an
        exception in the consumer, Ctrl-C included) closes the connection."""
        answer.started = time.monotonic()
        response = self._send("POST", "/chat/completions", json=body)
        try:
            if response.status_code != 200:
                raise ChatError(_error_line(response))
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # keep-alive comments, blank lines
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"] or {}
                    raise ChatError(clean(f"Error during the answer: {error.get('message')}"))
                usage = chunk.get("usage")
                if usage:
                    answer.prompt_tokens = usage.get("prompt_tokens")
                    answer.completion_tokens = usage.get("completion_tokens")
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
                    if text:
                        if answer.first_token is None:
                            answer.first_token = time.monotonic()
                        answer.text += text
                        yield text
        except httpx.HTTPError as exc:
            raise ChatError(f"The connection to {self.url} broke: {exc}") from None
        except (ValueError, TypeError, AttributeError) as exc:  # not OpenAI's chunks
            raise ChatError(f"Unexpected stream from {self.url}: {exc!r}") from None
        finally:
            answer.ended = time.monotonic()
            response.close()


@dataclass
class Session:
    gateway: Gateway
    console: Console
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    markdown: bool = True
    messages: list[dict[str, Any]] = field(default_factory=list)

    def conversation(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def error(self, message: str) -> None:
        self.console.print(f"[red]{escape(message)}[/red]", highlight=False)

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{escape(message)}[/dim]", highlight=False)

    def ensure_model(self) -> bool:
        if self.model is not None:
            return True
        try:
            models = self.gateway.models()
        except ChatError as exc:
            self.error(str(exc))
            return False
        if not models:
            self.error("The gateway serves no model.")
            return False
        self.model = models[0]
        return True

    # --- commands --------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        handlers: dict[str, Callable[[str], None]] = {
            "model": self._model,
            "system": self._system,
            "clear": self._clear,
            "save": self._save,
            "load": self._load,
            "help": lambda _: self.console.print(HELP, markup=False, highlight=False),
        }
        if name in ("quit", "exit"):
            return False
        handler = handlers.get(name)
        if handler is None:
            self.error(f"Unknown command /{name}. /help lists the commands.")
        else:
            handler(arg)
        return True

    def _model(self, name: str) -> None:
        try:
            models = self.gateway.models()
        except ChatError as exc:
            self.error(str(exc))
            return
        if not name:
            self.console.print(f"Model: {self.model or '(none)'}", markup=False, highlight=False)
            self.console.print("Served: " + ", ".join(models), markup=False, highlight=False)
        elif name in models:
            self.model = name
            self.note(f"Model set to {name}.")
        else:
            self.error(f"Unknown model '{name}'. Served: {', '.join(models)}")

    def _system(self, text: str) -> None:
        if not text:
            shown = self.system if self.system is not None else "(none)"
            self.console.print(f"System prompt: {shown}", markup=False, highlight=False)
        elif text == "-":
            self.system = None
            self.note("System prompt removed.")
        else:
            self.system = text
            self.note("System prompt set.")

    def _clear(self, _: str) -> None:
        self.messages.clear()
        self.note("Conversation cleared.")

    def _save(self, path: str) -> None:
        if not path:
            self.error("Usage: /save FILE")
            return
        messages = self.conversation()
        data = {"model": self.model, "messages": messages}
        try:
            Path(path).expanduser().write_text(
                json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            self.error(f"Cannot write {path}: {exc.strerror or exc}")
            return
        self.note(f"Saved {len(messages)} messages to {path}.")

    def _load(self, path: str) -> None:
        if not path:
            self.error("Usage: /load FILE")
            return
        try:
            data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        except OSError as exc:
            self.error(f"Cannot read {path}: {exc.strerror or exc}")
            return
        except ValueError as exc:
            self.error(f"{path} is not JSON: {exc}")
            return
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            self.error(f"{path} holds no list of messages with roles.")
            return
        system = None
        if messages and messages[0]["role"] == "system":
            system = str(messages[0].get("content") or "")
            messages = messages[1:]
        self.system, self.messages = system, list(messages)
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            self.model = data["model"]
        self.note(f"Loaded {len(messages)} messages from {path} (model {self.model}).")

    # --- asking ----------------------------------------------------------------------------

    def ask(self, question: str) -> None:
        if not self.ensure_model():
            return
        self.messages.append({"role": "user", "content": question})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.conversation(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        answer = Answer()
        shown = ""
        stream = self.gateway.stream(body, answer)
        try:
            for delta in stream:
                text = clean(delta)
                shown += text
                self.console.out(text, end="", highlight=False)
                self.console.file.flush()
        except KeyboardInterrupt:
            answer.stopped = True
            answer.ended = time.monotonic()
        except ChatError as exc:
            if shown:
                self.console.out("")
            self.error(str(exc))
            self.messages.pop()  # unanswered: not part of the conversation
            return
        finally:
            stream.close()  # the connection closed: the gateway stops generating
        if shown and not shown.endswith("\n"):
            self.console.out("")
        if not answer.stopped:
            self._render_markdown(shown)
        if answer.text:
            self.messages.append({"role": "assistant", "content": answer.text})
        elif answer.stopped:
            self.messages.pop()
        if answer.stopped:
            self.note("[answer stopped]")
        elif answer.finish_reason == "content_filter":
            self.note("[answer stopped by the content filter]")
        elif answer.finish_reason == "length":
            self.note("[answer cut at the token limit]")
        stats = answer.stats()
        if stats:
            self.note(f"[{stats}]")

    def _render_markdown(self, text: str) -> None:
        """Replace the streamed text by its Markdown rendering when it is still on screen."""
        console = self.console
        if not (self.markdown and console.is_terminal and _MARKDOWN.search(text)):
            return
        from rich.cells import cell_len

        width = max(console.width, 1)
        rows = sum(max(1, -(-cell_len(line.expandtabs(8)) // width)) for line in text.split("\n"))
        if text.endswith("\n"):
            rows -= 1
        if rows >= console.height:
            return  # scrolled off: leave the plain text
        console.file.write(f"\x1b[{rows}F\x1b[J")  # up to the answer's first row, erase below
        console.print(Markdown(text, hyperlinks=False))


def _history_path() -> Path:
    return Path.home() / ".local" / "share" / "qwen-gateway" / "chat-history"


def _read_line(session: Any) -> str:
    if session is None:  # not a terminal: one line per question
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")
    text: str = session.prompt()
    return text


def _prompt_session(history: Path) -> Any:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

    bindings = KeyBindings()

    @bindings.add("enter")
    def _send(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")  # Alt-Enter arrives as Esc Enter
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    history.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return PromptSession(
        "› ",
        multiline=True,
        key_bindings=bindings,
        history=FileHistory(str(history)),
        prompt_continuation=lambda width, line, soft: " " * width,
    )


def chat(
    url: Annotated[
        str, typer.Option(help="The gateway's OpenAI base URL.", show_default=True)
    ] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(help=f"API key (default: ${KEY_ENV}).", envvar=KEY_ENV, show_envvar=False),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name (default: the first of /v1/models).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Output tokens per answer.")] = None,
    markdown: Annotated[
        bool, typer.Option(help="Render answers as Markdown once complete.")
    ] = True,
    history: Annotated[
        Path | None,
        typer.Option(
            help="Input history file (default: ~/.local/share/qwen-gateway/chat-history)."
        ),
    ] = None,
) -> None:
    """Chat with a gateway in the terminal (/help lists the commands)."""
    console = Console(highlight=False)
    gateway = Gateway(url, key)
    session = Session(gateway, console, model, system, temperature, max_tokens, markdown)
    reader = _prompt_session(history or _history_path()) if sys.stdin.isatty() else None
    try:
        if session.ensure_model():
            session.note(f"Chatting with {session.model} at {gateway.url}. /help lists commands.")
        while True:
            try:
                line = _read_line(reader)
            except (EOFError, KeyboardInterrupt):
                break
            if not line.strip():
                continue
            try:
                if line.startswith("/") and not line.startswith("//"):
                    if not session.command(line.strip()):
                        break
                    continue
                session.ask(line[1:] if line.startswith("//") else line)
            except KeyboardInterrupt:  # while /model or the first request waited
                session.note("[interrupted]")
    finally:
        gateway.close()
