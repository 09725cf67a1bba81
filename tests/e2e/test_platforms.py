"""`realm serve` under each platform's environment: detection, `$PORT`, probes, log shape, the
Event Grid handshake, CloudEvents in binary and structured mode (built with the CloudEvents
SDK), and SIGTERM drain; plus `realm function validate` and `serve --function`."""

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from conftest import RealmServer

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PLATFORMS = {
    "cloud-run": {"K_SERVICE": "chat", "K_REVISION": "chat-00001", "K_CONFIGURATION": "chat",
                  "GOOGLE_CLOUD_PROJECT": "realm-test"},
    "knative": {"K_SERVICE": "chat", "K_REVISION": "chat-00001", "K_CONFIGURATION": "chat",
                "KUBERNETES_SERVICE_HOST": "10.96.0.1"},
    "container-apps": {"CONTAINER_APP_NAME": "chat", "CONTAINER_APP_REVISION": "chat--1"},
    "local": {},
}


def request(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(method, path, body, headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def event(kind, data):
    return CloudEvent({"type": kind, "source": "//storage/test-bucket", "id": "evt-1", "specversion": "1.0",
                       "datacontenttype": "application/json"}, data)


def batch_input(path, n=2):
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "default", "prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0}})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_platform_environment(platform, tmp_path):
    port = free_port()
    env = dict(PLATFORMS[platform], PORT=str(port))
    batch_input(tmp_path / "in.jsonl")
    s = RealmServer("--batch-local-root", str(tmp_path), env=env, port=None, api_keys=())
    try:
        assert s.port == port, "the port comes from $PORT"
        records = s.log_records()
        detected = [r for r in records if r.get("message") == "platform"]
        assert detected and detected[0]["platform"] == platform
        if platform == "cloud-run":
            assert all("severity" in r for r in records), "Cloud Logging's shape"
            def models_records():
                return [r for r in s.log_records() if r.get("route") == "/v1/models"]

            # The server's own check already asked for /v1/models, untraced, and its record can
            # still be on its way (the log is read from stderr by another thread): wait (bounded)
            # for a record that carries a trace, and check it is this request's.
            def traced_records():
                return [r for r in models_records() if "logging.googleapis.com/trace" in r]

            request(s, "GET", "/v1/models", headers={"X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/1;o=1"})
            deadline = time.monotonic() + 10
            while not traced_records() and time.monotonic() < deadline:
                time.sleep(0.02)
            traced = traced_records()
            assert [r["logging.googleapis.com/trace"] for r in traced] == [
                "projects/realm-test/traces/0af7651916cd43dd8448eb211c80319c"], models_records()
        assert s.get("/health")[0] == 200
        assert s.get("/ready")[0] == 200

        resp, _ = request(s, "OPTIONS", "/events", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
        assert resp.status == 200
        assert resp.getheader("WebHook-Allowed-Origin") == "eventgrid.azure.net"
        assert resp.getheader("WebHook-Allowed-Rate") == "*"

        for path in ("/events", "/"):
            for mode, convert in (("binary", to_binary), ("structured", to_structured)):
                data = {"input": f"file://{tmp_path}/in.jsonl", "output": f"file://{tmp_path}/out-{mode}{path.strip('/')}/"}
                msg = convert(event("dev.realm.batch.v1.requested", data), JSONFormat())
                resp, body = request(s, "POST", path, msg.body, msg.headers)
                answer = json.loads(body)
                assert resp.status == 202, (path, mode, body)
                assert answer["id"] == "evt-1" and answer["type"] == "dev.realm.batch.v1.requested", answer
                assert answer["batch"]["status"] == "in_progress" and answer["batch"]["id"].startswith("batch_")
        resp, body = request(s, "POST", "/events", b"not an event", {"Content-Type": "text/plain"})
        assert resp.status == 400 and json.loads(body)["error"]["param"] == "cloudevent"
    finally:
        assert s.stop(signal.SIGTERM) == 0


def test_sigterm_drains_on_cloud_run():
    s = RealmServer(env=dict(PLATFORMS["cloud-run"]), api_keys=())
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    body = {"model": s.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32,
            "temperature": 0, "stream": True, "ignore_eos": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: ")
    s.proc.send_signal(signal.SIGTERM)
    rest = resp.read().decode()
    assert rest.rstrip().endswith("data: [DONE]")
    assert s.proc.wait(30) == 0
    assert any(r.get("message", "").startswith("shutting down") for r in s.log_records())


def realm(*args):
    binary = os.environ.get("REALM_BIN", "target/release/realm")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_function_validate_examples_and_broken(tmp_path):
    for example in ("chat", "batch"):
        r = realm("function", "validate", str(ROOT / "functions" / example / "realm.yaml"))
        assert r.returncode == 0, r.stderr
        assert "ok" in r.stdout
    broken = tmp_path / "realm.yaml"
    broken.write_text("name: chat\nmodel:\n  uri: default\nscaling:\n  max_instances: 0\n  gpu: nvidia-l4\n")
    r = realm("function", "validate", str(broken))
    assert r.returncode != 0
    assert "scaling.max_instances: 0 is out of range" in r.stderr
    schema = json.loads(realm("function", "schema").stdout)
    assert "runtime" in json.dumps(schema)


@pytest.mark.parametrize("given_as", ["file", "REALM_FUNCTION_YAML"])
def test_serve_with_a_function_manifest(tmp_path, given_as):
    manifest = tmp_path / "realm.yaml"
    manifest.write_text(
        "name: tiny-chat\nmodel:\n  uri: {}\nruntime:\n  context_length: 64\n"
        "generation:\n  temperature: 0\n  max_tokens: 5\ntriggers:\n  events: [dev.realm.batch.v1.requested]\n"
        .format(os.environ.get("REALM_TEST_MODEL", "default")))
    if given_as == "file":
        s = RealmServer("--function", str(manifest), api_keys=())
    else:
        s = RealmServer(api_keys=(), env={"REALM_FUNCTION_YAML": manifest.read_text()})
    try:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "Name the capital of France."}]}
        resp, data = request(s, "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        answer = json.loads(data)
        assert resp.status == 200, answer
        assert answer["usage"]["completion_tokens"] == 5, "generation.max_tokens is the default"
        body["max_tokens"] = 60
        resp, data = request(s, "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        assert resp.status == 400 and "context of 64 tokens" in json.loads(data)["error"]["message"]
        other = to_binary(event("google.cloud.storage.object.v1.finalized", {"bucket": "b", "name": "n"}), JSONFormat())
        resp, data = request(s, "POST", "/events", other.body, other.headers)
        assert resp.status == 400 and "not a trigger of this function" in json.loads(data)["error"]["message"]
    finally:
        assert s.stop() == 0


def test_the_example_functions_serve():
    chat = RealmServer("--function", str(ROOT / "functions" / "chat" / "realm.yaml"), api_keys=())
    try:
        assert chat.get("/ready")[0] == 200
        body = {"model": "chat", "messages": [{"role": "user", "content": "Name the capital of France."}],
                "max_tokens": 12, "temperature": 0}
        resp, data = request(chat, "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        assert resp.status == 200, data
        assert "Paris" in json.loads(data)["choices"][0]["message"]["content"]
    finally:
        assert chat.stop() == 0
    # The batch example has no HTTP trigger: the OpenAI routes are closed, events are taken.
    port = free_port()
    batch = RealmServer("--function", str(ROOT / "functions" / "batch" / "realm.yaml"), api_keys=(),
                        env={"PORT": str(port)}, port=None, model_check=False)
    try:
        assert batch.get("/ready")[0] == 200
        status, body = batch.get("/v1/models")
        assert status == 404 and "no HTTP trigger" in body
        msg = to_structured(event("dev.realm.batch.v1.requested", {"input": "file:///etc/passwd", "output": "file:///tmp/x/"}),
                            JSONFormat())
        resp, body = request(batch, "POST", "/events", msg.body, msg.headers)
        assert resp.status == 400 and "local files are not open to events" in json.loads(body)["error"]["message"]
    finally:
        assert batch.stop() == 0
