"""The Lambda adapter under cargo-lambda's emulation of the Lambda Runtime API and Function
URLs: `realm serve` finds `AWS_LAMBDA_RUNTIME_API`, loads the model during init, then answers
direct invokes (an OpenAI body) and Function URL requests, streamed (SSE) or buffered."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CARGO_LAMBDA = str(Path(sys.executable).parent / "cargo-lambda")
ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LambdaEmulator:
    def __init__(self, response_mode):
        self.port = free_port()
        self.emulator = subprocess.Popen(
            [CARGO_LAMBDA, "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait_port()
        env = dict(os.environ,
                   AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{self.port}/.rt",
                   AWS_LAMBDA_FUNCTION_NAME="_", AWS_LAMBDA_FUNCTION_VERSION="1",
                   AWS_LAMBDA_FUNCTION_MEMORY_SIZE="4096", REALM_LAMBDA_RESPONSE=response_mode, REALM_LOG="info")
        binary = os.environ.get("REALM_BIN", "target/release/realm")
        model = os.environ.get("REALM_TEST_MODEL", "default")
        self.function = subprocess.Popen([binary, "serve", "--model", model, "--threads", "2"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.monotonic() + 60
        while not any("polling the Lambda Runtime API" in line for line in self.log):
            assert time.monotonic() < deadline and self.function.poll() is None, "\n".join(self.log)
            self.log.append(self.function.stderr.readline())

    def _wait_port(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Lambda emulator did not start")

    def invoke(self, payload):
        r = subprocess.run([CARGO_LAMBDA, "lambda", "invoke", "--invoke-address", "127.0.0.1", "--invoke-port",
                            str(self.port), "--data-ascii", json.dumps(payload), "_"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        return r

    def url(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(method, "/lambda-url/_" + path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json"})
        return conn, conn.getresponse()

    def stop(self):
        for p in (self.function, self.emulator):
            p.kill()
            p.wait()


@pytest.fixture(params=["stream", "buffered"])
def emulator(request):
    e = LambdaEmulator(request.param)
    _, resp = e.url("GET", "/v1/models")
    e.model = json.loads(resp.read())["data"][0]["id"]
    yield e
    e.stop()


CHAT = {"messages": [{"role": "user", "content": "Name the capital of France."}],
        "temperature": 0, "max_tokens": 20}


def test_init_loads_the_model_before_the_first_invocation(emulator):
    init = [json.loads(line) for line in emulator.log if "lambda init done" in line]
    assert init and init[0]["fields"]["load_ms"] >= 0


def test_direct_invoke_with_an_openai_body(emulator):
    r = emulator.invoke(dict(CHAT, model=emulator.model))
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert "Paris" in answer["choices"][0]["message"]["content"]
    r = emulator.invoke({"model": emulator.model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
    assert r.returncode == 0 and json.loads(r.stdout)["object"] == "text_completion"
    r = emulator.invoke({"model": emulator.model, "messages": [], "max_tokens": 1})
    assert r.returncode != 0 and "RequestFailed" in r.stderr and "400" in r.stderr
    r = emulator.invoke({"hello": "world"})
    assert r.returncode != 0 and "BadEvent" in (r.stdout + r.stderr)


def test_function_url_requests_go_through_the_router(emulator):
    conn, resp = emulator.url("GET", "/v1/models")
    assert resp.status == 200
    assert json.loads(resp.read())["data"][0]["object"] == "model"
    conn, resp = emulator.url("POST", "/v1/chat/completions", dict(CHAT, model=emulator.model, stream=True))
    assert resp.status == 200
    frames = [line for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    text = "".join(json.loads(f[6:])["choices"][0]["delta"].get("content", "") for f in frames[:-1])
    assert "Paris" in text
    conn, resp = emulator.url("POST", "/v1/chat/completions", dict(CHAT, model="gpt-4o"))
    assert resp.status == 404 and json.loads(resp.read())["error"]["code"] == "model_not_found"


def test_s3_notifications_start_batch_jobs_that_finish_inside_the_invocation(emulator):
    # The object is a job's own output: nothing starts, and nothing reaches any S3 endpoint.
    note = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": "b"}, "object": {"key": "in/a.jsonl.out/part-00000.jsonl"}}}]}
    r = emulator.invoke(note)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["status"] == "completed" and answer["batches"] == []
    r = emulator.invoke({"source": "aws.s3", "detail-type": "Object Created", "detail": {}})
    assert r.returncode != 0 and "RequestFailed" in r.stderr
