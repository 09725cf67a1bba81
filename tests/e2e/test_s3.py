"""Realm against a real S3-compatible server (moto in server mode, on loopback): `realm serve
--model s3://...` fetches the model into its cache and serves it, and an S3 notification
starts a batch job whose results are read back from the bucket."""

import json
import os
import socket
import subprocess
import sys
import time

import boto3
import pytest

from conftest import RealmServer


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
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
    model = os.environ.get("REALM_TEST_MODEL")
    if not model:
        model = subprocess.run([os.environ.get("REALM_BIN", "target/release/realm"), "pull"], capture_output=True,
                               text=True).stderr.rsplit(" at ", 1)[1].split()[0]
    client.upload_file(model, "models", "smollm2/model.gguf")
    yield client, env
    proc.kill()
    proc.wait()


def test_serve_a_model_from_s3_and_run_a_batch_an_s3_notification_starts(s3):
    client, env = s3
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "model", "prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0}})
             for i in range(5)] + ["not json"]
    client.put_object(Bucket="jobs", Key="in/day1.jsonl", Body="\n".join(lines).encode())
    s = RealmServer(env=env, api_keys=(), model="s3://models/smollm2/model.gguf")
    try:
        assert s.model == "model", "the id is the object's file name"
        note = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                             "s3": {"bucket": {"name": "jobs"}, "object": {"key": "in/day1.jsonl"}}}]}
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        conn.request("POST", "/events", json.dumps(note), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        assert resp.status == 202, answer
        batch_id = answer["batches"][0]["id"]
        deadline = time.monotonic() + 120
        while True:
            batch = json.loads(s.get(f"/v1/batches/{batch_id}")[1])
            if batch["status"] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
        out = client.get_object(Bucket="jobs", Key="in/day1.jsonl.out/output.jsonl")["Body"].read().decode()
        ids = sorted(json.loads(line)["custom_id"] for line in out.splitlines())
        assert ids == [f"q{i}" for i in range(5)]
        errors = client.get_object(Bucket="jobs", Key="in/day1.jsonl.out/errors.jsonl")["Body"].read().decode()
        assert json.loads(errors.splitlines()[0])["error"]["code"] == "invalid_json"
    finally:
        assert s.stop() == 0
