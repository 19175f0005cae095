"""The target's answers from a serving engine: an OpenAI-compatible chat-completions server (vLLM, SGLang,
`transformers serve`), with bounded retries and a check that it serves the target before any work is sent.

The check: GET /v1/models must list the expected name (`--server-model`, by default the target's spec), and the
server must turn a probe conversation into the tokens the target's tokenizer and chat template give: compared
token for token where the server says which tokens (vLLM's /tokenize of messages, or its `return_token_ids`),
else by count (the completion's `usage.prompt_tokens`), plus the rendered text's tokens where /tokenize takes
text only (SGLang).

Answers come back as text; `regenerate.py` re-tokenizes them with the target's tokenizer (or keeps the server's
token ids where it returns them) and checks them against the chat template.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import httpx2 as httpx

from dspark_core.data.chat import _template_kwargs, render_ids
from dspark_core.decoding import SamplingConfig
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel

#: a conversation whose rendering differs between tokenizers and templates (accents, digits, code, an emoji,
#: an earlier assistant turn, the template's default system prompt where it has one)
PROBE = [("user", "Translate «naïve café» into German, then count: 1, 22, 333."),
         ("assistant", "Naiver Café. 1, 22, 333."),
         ("user", "Danke! Now write `print(42)` in Python 🐍")]

#: the first wait after a failed request; each further one doubles, up to LONGEST_RETRY_DELAY
FIRST_RETRY_DELAY = 0.25
LONGEST_RETRY_DELAY = 30.0
#: answers that mean "busy or broken for now" (timeouts, rate limits, server errors), not "wrong request"
RETRIED_STATUS = {408, 409, 425, 429}

#: the server's finish reasons in the local engine's words
FINISH_REASONS = {"stop": "eos", "length": "length"}


@dataclass(frozen=True)
class Reply:
    """One answer of the server."""

    text: str
    finish_reason: str  # "eos" | "length", as the local engine says
    completion_tokens: int | None
    token_ids: list[int] | None  # the exact tokens, where the server returns them (vLLM's return_token_ids)


class ChatServer:
    """A connection to one server. `check` first, then `chat` from any number of threads (at most `concurrency`
    requests are open at once); `stop` makes requests still retrying give up at once."""

    def __init__(self, url: str, model: str, *, concurrency: int, timeout: float, retry_seconds: float):
        self.url = url
        self.base = base_url(url)
        self.model = model
        self.retry_seconds = retry_seconds
        self.returns_token_ids = False
        self.token_check = ""
        self.max_model_len: int | None = None  # the server's context, where it says (vLLM's --max-model-len)
        self._stopping = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0),
                                    limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *_) -> None:
        self.stop()
        self._client.close()

    def stop(self) -> None:
        self._stopping.set()

    # ---- the check -------------------------------------------------------------------------------
    def check(self, target: TargetModel) -> None:
        """Refuse (one line naming the URL, what it serves and the fix) a server that does not serve `target`."""
        if not target.has_chat_template:
            raise DsparkError(f"{target.spec!r} has no chat template, so a chat-completions server cannot answer as it "
                              f"does locally; regenerate without --server")
        served = self._served_models()
        if self.model not in served:
            raise DsparkError(
                f"the server at {self.url} serves {', '.join(map(repr, served)) or 'no model'}, not {self.model!r}: start "
                f"it with the target (e.g. `vllm serve MODEL --served-model-name {self.model}`), or pass --server-model "
                f"{served[0] if len(served) == 1 else 'NAME'} if that is the target under another name")
        expected = render_ids(target, PROBE, add_generation_prompt=True)
        probe = self._probe(target)
        problem = self._compare_tokens(target, expected, probe)
        if problem:
            raise DsparkError(
                f"the server at {self.url} serves {self.model!r} with another tokenizer or chat template than "
                f"{target.spec!r} ({problem}): it serves another model; start it with the target's own files "
                f"({target.snapshot.path if target.snapshot else target.spec})")

    def _compare_tokens(self, target: TargetModel, expected: list[int], probe: dict) -> str | None:
        """What differs between the server's tokens for the probe conversation and the target's, or None. The
        closest comparison the server allows: its token ids of the rendered conversation (vLLM's /tokenize or
        prompt_token_ids), else its token ids of the rendered text (SGLang's /tokenize) and its count of the
        conversation's tokens, else that count alone."""
        conversation = self._tokenize(target, {"messages": _messages(PROBE), "add_generation_prompt": True})
        if conversation is None and isinstance(probe.get("prompt_token_ids"), list):
            conversation = [int(t) for t in probe["prompt_token_ids"]]
        if conversation is not None:
            self.token_check = "token ids of the probe conversation"
            return None if conversation == expected else _difference("the probe conversation", conversation, expected)
        count = (probe.get("usage") or {}).get("prompt_tokens")
        if not isinstance(count, int):
            raise DsparkError(f"the server at {self.url} says neither which nor how many tokens a prompt is (no "
                              f"/tokenize, no usage.prompt_tokens), so it cannot be checked to serve {target.spec!r}; "
                              f"use vLLM or SGLang")
        text = target.tokenizer.decode(expected)  # the rendered conversation, as text: checks the tokenizer alone
        tokens = self._tokenize(target, {"prompt": text})
        self.token_check = "token count of the probe conversation" + (", token ids of its text" if tokens else "")
        ours = list(target.tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens is not None and tokens != ours:
            return _difference("the probe conversation's text", tokens, ours)
        return None if count == len(expected) else f"the probe conversation is {count} tokens there, {len(expected)} here"

    def _served_models(self) -> list[str]:
        response = self._send("GET", "/v1/models", None, first_contact=True)
        try:
            entries = response.json()["data"]
            names = [str(entry["id"]) for entry in entries]
            lengths = [entry.get("max_model_len") for entry in entries if str(entry["id"]) == self.model]
            self.max_model_len = lengths[0] if lengths and isinstance(lengths[0], int) else None
            return names
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DsparkError(f"{self.url} does not answer GET /v1/models as an OpenAI-compatible server "
                              f"(HTTP {response.status_code}: {_excerpt(response.text)}); check the address") from None

    def _tokenize(self, target: TargetModel, what: dict) -> list[int] | None:
        """The server's tokens for `what` (messages or a prompt) from its /tokenize (vLLM, SGLang), or None where it
        has none or does not take that form."""
        body = {"model": self.model, **what, "add_special_tokens": False,
                **(_template_body(target) if "messages" in what else {})}
        response = self._send("POST", "/tokenize", body, retried=False)
        if response.status_code != 200:
            return None
        try:
            tokens = response.json()["tokens"]
            return [int(t) for t in tokens] if tokens else None
        except (ValueError, KeyError, TypeError):
            return None

    def _probe(self, target: TargetModel) -> dict:
        """A one-token greedy answer to the probe, which also finds out whether the server returns token ids."""
        body = {"model": self.model, "messages": _messages(PROBE), "max_tokens": 1, "temperature": 0.0,
                **_template_body(target)}
        response = self._send("POST", "/v1/chat/completions", {**body, "return_token_ids": True})
        if 400 <= response.status_code < 500:  # a server that refuses fields it does not know
            response = self._send("POST", "/v1/chat/completions", body)
        answer = self._json(response, "a probe request")
        self.returns_token_ids = isinstance(answer.get("choices", [{}])[0].get("token_ids"), list)
        return answer

    # ---- work ------------------------------------------------------------------------------------
    def chat(self, target: TargetModel, messages: list[tuple[str, str]], *, max_tokens: int, sampling: SamplingConfig,
             seed: int) -> Reply:
        body = {"model": self.model, "messages": _messages(messages), "max_tokens": max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, **_template_body(target)}
        if sampling.top_k and not sampling.greedy:
            body["top_k"] = sampling.top_k  # not in OpenAI's API; vLLM and SGLang take it
        if not sampling.greedy:
            body["seed"] = seed
        if self.returns_token_ids:
            body["return_token_ids"] = True
        answer = self._json(self._send("POST", "/v1/chat/completions", body), "a chat completion")
        try:
            choice = answer["choices"][0]
            message = choice["message"]
            reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            raise DsparkError(f"the server at {self.url} answered a chat completion without choices[0].message "
                              f"({_excerpt(str(answer))}); use an OpenAI-compatible server (vLLM, SGLang)") from None
        if message.get("reasoning_content") or message.get("reasoning"):
            raise DsparkError(f"the server at {self.url} splits the target's reasoning out of its answers (a reasoning "
                              f"parser), so they are not what the target wrote; start it without --reasoning-parser")
        if reason not in FINISH_REASONS:
            raise DsparkError(f"the server at {self.url} ended an answer with finish_reason {reason!r} (expected 'stop' "
                              f"or 'length'); start it without tools, stop strings or guided decoding")
        ids = choice.get("token_ids") if self.returns_token_ids else None
        return Reply(text=message.get("content") or "", finish_reason=FINISH_REASONS[reason],
                     completion_tokens=(answer.get("usage") or {}).get("completion_tokens"),
                     token_ids=[int(t) for t in ids] if isinstance(ids, list) else None)

    # ---- HTTP ------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, body: dict | None, *, first_contact: bool = False,
              retried: bool = True) -> httpx.Response:
        """The server's response to one request, retried with exponential backoff on connection errors, timeouts,
        HTTP 5xx and 429 for `retry_seconds` at most. Nothing listening at the first contact fails at once; with
        `retried` False any HTTP answer is returned as it is (an optional endpoint)."""
        failing_since, delay = None, FIRST_RETRY_DELAY
        while True:
            if self._stopping.is_set():  # another request failed for good: send nothing more
                raise DsparkError(f"stopped sending to the server at {self.url}: another request failed")
            retry_after = None
            try:
                response = self._client.request(method, self.base + path, json=body)
            except httpx.TransportError as exc:
                if first_contact and isinstance(exc, httpx.ConnectError):
                    raise DsparkError(f"no server answers at {self.url} ({_excerpt(str(exc)) or type(exc).__name__}): "
                                      f"start it (e.g. `vllm serve MODEL`) or check the address") from None
                failure = f"{type(exc).__name__}: {_excerpt(str(exc))}".rstrip(": ")
            else:
                if not retried or (response.status_code < 500 and response.status_code not in RETRIED_STATUS):
                    return response
                failure = f"HTTP {response.status_code}: {_excerpt(response.text)}"
                retry_after = _seconds(response.headers.get("retry-after"))
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since >= self.retry_seconds:
                raise DsparkError(
                    f"the server at {self.url} kept failing for {now - failing_since:.0f} s (last: {failure}); the "
                    f"answers so far are saved: make it answer again (or raise --server-retry-seconds) and rerun the "
                    f"same command to resume")
            wait = retry_after if retry_after is not None else delay * random.uniform(0.5, 1.0)
            self._stopping.wait(min(wait, LONGEST_RETRY_DELAY, max(0.0, failing_since + self.retry_seconds - now)))
            delay = min(2 * delay, LONGEST_RETRY_DELAY)

    def _json(self, response: httpx.Response, what: str) -> dict:
        if response.status_code != 200:
            raise DsparkError(f"the server at {self.url} refused {what} (HTTP {response.status_code}: "
                              f"{_excerpt(response.text)}); check that it serves {self.model!r} and takes these "
                              f"sampling settings")
        try:
            return response.json()
        except ValueError:
            raise DsparkError(f"the server at {self.url} answered {what} with something other than JSON "
                              f"({_excerpt(response.text)}); use an OpenAI-compatible server (vLLM, SGLang)") from None


def _difference(what: str, theirs: list[int], ours: list[int]) -> str:
    if len(theirs) == len(ours):
        return f"{what} is other tokens there than here"
    return f"{what} is {len(theirs)} tokens there, {len(ours)} here"


def base_url(url: str) -> str:
    """'http://host:8000/v1/' -> 'http://host:8000' (the API's paths are added to it)."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _messages(messages: list[tuple[str, str]]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in messages]


def _template_body(target: TargetModel) -> dict:
    """The chat-template arguments the local rendering uses (non-thinking mode), for the server to use too."""
    kwargs = _template_kwargs(target)
    return {"chat_template_kwargs": kwargs} if kwargs else {}


def _excerpt(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
