"""Starts real `realm serve` processes on loopback for the OpenAI-client tests.

REALM_BIN names the binary (the Rust test that runs this suite passes its own build);
REALM_TEST_MODEL the model (default: the default model, which `realm pull` fetched).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

API_KEY = "sk-realm-test-key"


class RealmServer:
    """`realm serve` on loopback. `env` adds variables (a platform's); with `port=None` the
    port comes from `$PORT` in `env`, as the platforms set it; with `model=False` no `--model`
    is given (a manifest names it); with `ready=False` the constructor does not wait for it."""

    def __init__(self, *extra_args, api_keys=(API_KEY,), env=None, port=0, model_check=True, model=None,
                 ready=True):
        binary = os.environ.get("REALM_BIN", "target/release/realm")
        args = [binary, "serve", "--host", "127.0.0.1", "--threads", "2"]
        if model is not False:
            args += ["--model", model or os.environ.get("REALM_TEST_MODEL", "default")]
        if port is not None:
            args += ["--port", str(port)]
        if api_keys:
            args += ["--api-keys", ",".join(api_keys)]
        args += list(extra_args)
        env = dict(os.environ, REALM_LOG="info", **(env or {}))
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.log = []
        self.port = None
        deadline = time.monotonic() + 30
        while self.port is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("realm serve did not start:\n" + "\n".join(self.log))
            line = self.proc.stderr.readline()
            self.log.append(line.rstrip())
            try:
                record = json.loads(line)
            except ValueError:
                continue
            # JSON lines keep fields under "fields"; Cloud Logging's shape has them at the top.
            fields = record.get("fields", record)
            if fields.get("message") == "listening":
                self.port = int(fields["addr"].rsplit(":", 1)[1])
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()
        self.base = f"http://127.0.0.1:{self.port}"
        if not ready:
            return
        self.wait_ready()
        if model_check:
            models = json.loads(self.get("/v1/models", auth=True)[1])
            self.model = models["data"][0]["id"]

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def log_records(self):
        """The JSON log lines so far, fields flattened."""
        out = []
        for line in list(self.log):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            out.append({**record, **record.get("fields", {})})
        return out

    def get(self, path, auth=False):
        req = urllib.request.Request(self.base + path)
        if auth:
            req.add_header("Authorization", f"Bearer {API_KEY}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post_event(self, body, headers):
        """POSTs an event to /events; returns the status and the JSON answer."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/events", body, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())

    def wait_batch(self, batch_id, timeout=120):
        """The batch object once the job has completed or failed."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get(f"/v1/batches/{batch_id}", auth=True)
            batch = json.loads(body)
            assert status == 200 and batch["object"] == "batch", batch
            if batch["status"] in ("completed", "failed"):
                return batch
            assert time.monotonic() < deadline, batch
            time.sleep(0.05)

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/ready")[0] == 200:
                return
            time.sleep(0.02)
        raise RuntimeError("realm serve never became ready")

    def metric(self, name, labels=""):
        """The value of one sample in /metrics, 0 when absent."""
        _, text = self.get("/metrics")
        prefix = name + ("{" + labels + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(prefix + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    s = RealmServer()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, name):
    """Waits until `proc` (an emulator named `name`) accepts connections on `port`."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"{name} exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.05)


def batch_lines(model, n):
    """A batch input of `n` completions for `model`, then one line that is not JSON."""
    return "\n".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                                 "body": {"model": model, "prompt": f"Count to {i}:", "max_tokens": 4,
                                          "temperature": 0}}) for i in range(n)) + "\n{broken\n"


def deliver(server, kind, data, source="//storage.test"):
    """Posts a binary-mode storage CloudEvent of type `kind`; the batch it started, once done."""
    msg = to_binary(CloudEvent({"type": kind, "source": source, "id": f"ev-{time.monotonic_ns()}",
                                "specversion": "1.0", "datacontenttype": "application/json"}, data), JSONFormat())
    status, answer = server.post_event(msg.body, msg.headers)
    assert status == 202, answer
    batch = server.wait_batch(answer["batch"]["id"])
    assert batch["status"] == "completed", json.dumps(batch)
    return batch


def check_results(output, errors, n):
    """The output answers every good line of `batch_lines(.., n)` once; the error file the bad one."""
    ids = sorted(json.loads(line)["custom_id"] for line in output.splitlines())
    assert ids == sorted(f"c{i}" for i in range(n)), "every good line answered exactly once"
    [error] = [json.loads(line) for line in errors.splitlines()]
    assert error["error"]["code"] == "invalid_json"


@pytest.fixture(scope="session")
def model_file():
    """The default model's file (REALM_TEST_MODEL, or where `realm pull` put it)."""
    model = os.environ.get("REALM_TEST_MODEL")
    if not model or not os.path.isfile(model):
        model = subprocess.run([os.environ.get("REALM_BIN", "target/release/realm"), "pull"], capture_output=True,
                               text=True).stderr.rsplit(" at ", 1)[1].split()[0]
    return model


@pytest.fixture(scope="session")
def s3(tmp_path_factory, model_file):
    """moto in server mode on loopback with buckets `models` (the default model at
    smollm2/model.gguf) and `jobs`: `client` (boto3, straight to moto), `env` for realm, `port`."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "REALM_S3_FORCE_PATH_STYLE": "true",
           "REALM_MODEL_CACHE": str(tmp_path_factory.mktemp("cache"))}
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.05)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket="models")
    client.create_bucket(Bucket="jobs")
    model = model_file
    client.upload_file(model, "models", "smollm2/model.gguf")
    yield SimpleNamespace(client=client, env=env, port=port, model=model)
    proc.kill()
    proc.wait()
