"""Object-store faults: between Realm and a real S3 server (moto) sits a proxy that answers a
share of the requests with 503, loses the answer of others after the store acted on them, and
stalls some past Realm's timeout. A model still arrives whole, and a batch job killed midway and
started again still writes every custom_id exactly once."""

import hashlib
import json
import os
import signal
import subprocess
import time

from faultproxy import FaultProxy

BIN = os.environ.get("REALM_BIN", "target/release/realm")
LINES = 150


def faulty_env(s3, proxy, tmp_path):
    return {**os.environ, **s3.env, "AWS_ENDPOINT_URL": proxy.endpoint, "REALM_STORAGE_TIMEOUT_S": "1.5",
            "REALM_MODEL_CACHE": str(tmp_path / "cache"), "REALM_LOG": "warn"}


def keys(s3, prefix):
    listed = s3.client.list_objects_v2(Bucket="jobs", Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_model_fetched_through_a_faulty_store_arrives_whole(s3, tmp_path):
    with FaultProxy(s3.port, seed=11) as proxy:
        done = subprocess.run([BIN, "pull", "s3://models/smollm2/model.gguf"], env=faulty_env(s3, proxy, tmp_path),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert sum(n for fate, n in proxy.faults.items() if fate != "pass") > 0, proxy.faults
    fetched = tmp_path / "cache"
    [path] = [p for p in fetched.rglob("*.gguf")]
    with open(s3.model, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == want


def test_a_killed_batch_over_a_faulty_store_writes_every_custom_id_exactly_once(s3, tmp_path):
    lines = [json.dumps({"custom_id": f"f{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "default", "prompt": f"Item {i}:", "max_tokens": 4, "temperature": 0,
                                  "ignore_eos": True}})
             for i in range(LINES)]
    s3.client.put_object(Bucket="jobs", Key="faults/in.jsonl", Body="\n".join(lines).encode())
    model = os.environ.get("REALM_TEST_MODEL", "default")
    args = [BIN, "batch", "--model", model, "--threads", "2", "--max-batch", "8",
            "--input", "s3://jobs/faults/in.jsonl", "--output", "s3://jobs/faults/out/"]
    with FaultProxy(s3.port, seed=3) as proxy:
        env = faulty_env(s3, proxy, tmp_path)
        first = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not any(k.endswith(".commit") for k in keys(s3, "faults/out/")):
            assert time.monotonic() < deadline and first.poll() is None, "no part was committed"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert "faults/out/output.jsonl" not in keys(s3, "faults/out/"), "the first run was killed before the end"
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
    injected = {fate: n for fate, n in proxy.faults.items() if fate != "pass"}
    assert set(injected) == {"refuse", "drop", "stall"}, proxy.faults
    body = s3.client.get_object(Bucket="jobs", Key="faults/out/output.jsonl")["Body"].read().decode()
    ids = [json.loads(line)["custom_id"] for line in body.splitlines()]
    assert sorted(ids) == sorted(f"f{i}" for i in range(LINES)), "every line answered exactly once"
    errors = s3.client.get_object(Bucket="jobs", Key="faults/out/errors.jsonl")["Body"].read().decode()
    assert errors == "", errors
