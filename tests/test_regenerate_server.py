"""Regeneration through an OpenAI-compatible server: `transformers serve` (transformers' own chat-completions server)
serving the tiny target on 127.0.0.1, alone and behind a proxy that drops connections, answers HTTP 500 or names
another model."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2 as httpx
import pytest

from conftest import TINY, run_cli
from dspark_core.data.prompts import PromptRecord
from dspark_core.data.regenerate import RegenerationConfig, read_responses, regenerate_responses
from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel

GREEDY = RegenerationConfig(max_new_tokens=12, batch_size=3, temperature=0.0)


def _prompts():
    pairs = [(PromptRecord.create([("user", f"Tell me about topic {i}.")], "t"), "validation" if i == 0 else "train")
             for i in range(5)]
    multi = PromptRecord.create([("system", "Be brief."), ("user", "First question?"), ("user", "And a follow-up?")], "t")
    return pairs + [(multi, "train")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_target, tmp_path_factory):
    """`transformers serve` on the tiny target's snapshot, in float64 as the local reference runs it: (URL, the
    name it serves the model under)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(tiny_target.snapshot.path),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float64",
               "--log-level", "warning"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                models = httpx.get(f"{url}/v1/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        yield url, models["data"][0]["id"]
    finally:
        process.terminate()
        process.wait(timeout=30)


class FaultyProxy:
    """A proxy on 127.0.0.1 in front of `upstream`. `fault(n)` says what becomes of the n-th chat completion it
    receives (0, 1, ...): None passes it on, "drop" closes the connection without an answer, "500" answers HTTP
    500. With `model_name`, GET /v1/models lists that name instead of the server's. With `token_ids(text,
    finish_reason)`, it speaks vLLM's extension: a request's `return_token_ids` gets the answer's `token_ids`."""

    def __init__(self, upstream: str, fault=lambda n: None, model_name: str | None = None, token_ids=None):
        self.upstream, self.fault, self.model_name, self.token_ids = upstream, fault, model_name, token_ids
        self.chat_requests = 0
        self.faults: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    def next_fault(self) -> str | None:
        with self._lock:
            fault = self.fault(self.chat_requests)
            self.chat_requests += 1
            if fault:
                self.faults.append(fault)
            return fault


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")

    def _forward(self, method: str) -> None:
        proxy: FaultyProxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("content-length") or 0)) or None
        fault = proxy.next_fault() if self.path.endswith("/chat/completions") else None
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "500":
            self._answer(500, b'{"error": "injected failure"}')
            return
        with_ids = False
        if proxy.token_ids and self.path.endswith("/chat/completions"):
            request = json.loads(body)
            with_ids = bool(request.pop("return_token_ids", False))
            body = json.dumps(request).encode()
        response = httpx.request(method, proxy.upstream + self.path, content=body,
                                 headers={"content-type": "application/json"}, timeout=120)
        content = response.content
        if with_ids and response.status_code == 200:
            answer = response.json()
            for choice in answer["choices"]:
                choice["token_ids"] = proxy.token_ids(choice["message"]["content"], choice["finish_reason"])
            content = json.dumps(answer).encode()
        if proxy.model_name and self.path.endswith("/v1/models"):
            content = json.dumps({"object": "list", "data": [{"id": proxy.model_name, "object": "model"}]}).encode()
        self._answer(response.status_code, content)

    def _answer(self, status: int, content: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *_):
        pass


@pytest.fixture(scope="module")
def local(tiny_target, tmp_path_factory):
    """Greedy answers of the tiny target here, with the project's engine: the reference."""
    out = tmp_path_factory.mktemp("local")
    regenerate_responses(tiny_target, _prompts(), out, GREEDY, progress=False)
    return read_responses(out)[1]


def _through(url: str, model: str, **settings) -> RegenerationConfig:
    return replace(GREEDY, **{"server": url, "server_model": model, "concurrency": 3, **settings})


def _canonical(target: TargetModel, text: str, ended: bool) -> list[int]:
    """The text re-tokenized, plus the end-of-turn token when the model ended the answer."""
    return list(target.tokenizer(text, add_special_tokens=False)["input_ids"]) + ([2] if ended else [])


def test_greedy_answers_through_a_server_are_the_local_ones(tiny_target, server, local, tmp_path):
    url, model = server
    manifest = regenerate_responses(tiny_target, _prompts(), tmp_path / "r", _through(url, model), progress=False)
    answers = read_responses(tmp_path / "r")[1]
    assert [a["id"] for a in answers] == [a["id"] for a in local]  # the same order: by length, then id
    assert manifest["server"]["url"] == url and manifest["server"]["model"] == model
    assert manifest["server"]["response_ids"] == "re-tokenized text"  # transformers serve returns text only
    assert manifest["settings"]["answered_by"] == "server" and manifest["status"] == "complete"
    different_lengths = same_ids = 0
    for mine, reference in zip(answers, local):
        assert mine["messages"] == reference["messages"]  # every turn's text, multi-turn included
        assert mine["finish_reasons"] == reference["finish_reasons"]
        for ids, exact, reason, text in zip(mine["response_ids"], reference["response_ids"], mine["finish_reasons"],
                                            [m["content"] for m in mine["messages"] if m["role"] == "assistant"]):
            # Text carries no token boundaries: the ids are its tokenization, the generated ones where those were
            # that (a random model often picks another split of the same text).
            assert ids == _canonical(tiny_target, text, reason == "eos")
            if exact == _canonical(tiny_target, text, reason == "eos"):
                assert ids == exact
                same_ids += 1
            different_lengths += len(ids) != len(exact)
    assert same_ids >= 3
    # the server's completion_tokens (= the generated tokens) show the re-tokenizations that differ in length
    assert manifest["server"]["retokenized_differently"] == different_lengths


def test_token_ids_a_server_returns_are_stored_as_they_are(tiny_target, server, local, tmp_path):
    url, model = server

    def per_character(text: str, finish_reason: str) -> list[int]:
        """Token ids that decode to `text` but are not its tokenization (as a model may generate)."""
        pieces = [tiny_target.tokenizer(c, add_special_tokens=False)["input_ids"] for c in text]
        return [t for piece in pieces for t in piece] + ([2] if finish_reason == "stop" else [])

    with FaultyProxy(url, token_ids=per_character) as proxy:
        manifest = regenerate_responses(tiny_target, _prompts(), tmp_path / "r", _through(proxy.url, model),
                                        progress=False)
    assert manifest["server"]["response_ids"] == "the server's"
    answers = read_responses(tmp_path / "r")[1]
    assert [a["messages"] for a in answers] == [a["messages"] for a in local]
    for answer in answers:
        texts = [m["content"] for m in answer["messages"] if m["role"] == "assistant"]
        assert answer["response_ids"] == [per_character(text, "length") for text in texts]
    # ids that decode to other text: the server has another tokenizer
    shifted = lambda text, finish_reason: [t + 1 for t in per_character(text, finish_reason)]  # noqa: E731
    with FaultyProxy(url, token_ids=shifted) as proxy, pytest.raises(DsparkError) as failed:
        regenerate_responses(tiny_target, _prompts(), tmp_path / "other", _through(proxy.url, model), progress=False)
    assert "\n" not in str(failed.value) and "returned token ids that do not decode to the answer's text" in str(failed.value)


def test_a_server_that_drops_connections_and_fails_for_a_while_is_retried(tiny_target, server, local, tmp_path):
    url, model = server
    # past the check's probe requests (0 and 1), the next six fail: three conversations in flight retry twice
    with FaultyProxy(url, fault=lambda n: ("drop", "500")[n % 2] if 2 <= n < 8 else None) as proxy:
        regenerate_responses(tiny_target, _prompts(), tmp_path / "r", _through(proxy.url, model), progress=False)
    assert proxy.faults == ["drop", "500"] * 3
    assert [a["messages"] for a in read_responses(tmp_path / "r")[1]] == [a["messages"] for a in local]


def test_a_server_that_keeps_failing_stops_with_one_line_and_a_rerun_resumes(tiny_target, server, local, tmp_path):
    url, model = server
    out = tmp_path / "r"
    with FaultyProxy(url, fault=lambda n: "500" if n >= 5 else None) as proxy:  # the probe(s), then 3 or 4 answers
        with pytest.raises(DsparkError) as failed:
            regenerate_responses(tiny_target, _prompts(), out, _through(proxy.url, model, server_retry_seconds=1.0),
                                 progress=False)
    message = str(failed.value)
    assert "\n" not in message and f"the server at {proxy.url} kept failing" in message
    assert "HTTP 500" in message and "rerun the same command to resume" in message
    saved = (out / "responses.jsonl").read_text().splitlines()
    assert 1 <= len(saved) < len(local)
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    manifest = regenerate_responses(tiny_target, _prompts(), out, _through(url, model), progress=False)
    final = (out / "responses.jsonl").read_text().splitlines()
    assert manifest["conversations"] == len(local) and set(saved) <= set(final)  # nothing written was lost
    assert [json.loads(line)["messages"] for line in final] == [a["messages"] for a in local]


def test_a_url_where_no_server_answers_is_one_line_and_loses_nothing(tiny_target, local, tmp_path):
    out = tmp_path / "r"
    regenerate_responses(tiny_target, _prompts(), out, GREEDY, progress=False)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    nowhere = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(DsparkError) as failed:
        regenerate_responses(tiny_target, _prompts(), out, _through(nowhere, "any"), progress=False)
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"no server answers at {nowhere}")
    assert "start it" in message and "check the address" in message
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_server_of_another_model_is_refused(tiny_target, server, tmp_path):
    url, model = server
    # the name it lists is not the target's (by default, the target's spec)
    with FaultyProxy(url, model_name="Qwen/Qwen3-8B") as proxy, pytest.raises(DsparkError) as failed:
        regenerate_responses(tiny_target, _prompts(), tmp_path / "r", _through(proxy.url, None), progress=False)
    message = str(failed.value)
    assert "\n" not in message and proxy.chat_requests == 0
    assert f"the server at {proxy.url} serves 'Qwen/Qwen3-8B', not {TINY!r}" in message and "--server-model" in message
    # the expected name, but another chat template: the probe conversation renders to other tokens there
    tokenizer = copy.deepcopy(tiny_target.tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("named SmolLM, trained by Hugging Face", "named Nemo")
    other = TargetModel(tiny_target.model, tokenizer, tiny_target.snapshot, tiny_target.spec)
    with pytest.raises(DsparkError) as failed:
        regenerate_responses(other, _prompts(), tmp_path / "r", _through(url, model), progress=False)
    message = str(failed.value)
    assert "\n" not in message and "with another tokenizer or chat template than" in message
    assert "tokens there" in message and "start it with the target's own files" in message
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_the_command_line_regenerates_through_a_server(tiny_target, server, local, tmp_path, capsys):
    url, model = server
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(3)))
    code, _, err = run_cli(["data", "prompts", "--source", str(source), "--dataset", "served"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["data", "regenerate", "--target", TINY, "--dataset", "served", "--server", url,
                            "--nproc", "2"], capsys)
    assert code == 2 and "drop --nproc and raise --concurrency" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["data", "regenerate", "--target", TINY, "--dataset", "served", "--server", url,
                              "--server-model", model, "--concurrency", "2", "--max-new-tokens", "12",
                              "--temperature", "0"], capsys)
    assert code == 0, err
    assert "answered by" in out
    from dspark_core.data import layout

    manifest, answers = read_responses(layout.responses_dir("served", TINY))
    assert manifest["server"]["url"] == url and manifest["conversations"] == 3
    expected = {a["messages"][0]["content"]: a["messages"] for a in local}
    assert all(a["messages"] == expected[a["messages"][0]["content"]] for a in answers)
