"""Realm against a real S3-compatible server (moto in server mode, on loopback): `realm serve
--model s3://...` fetches the model into its cache and serves it, and an S3 notification
starts a batch job whose results are read back from the bucket."""

import hashlib
import json
import time

from conftest import RealmServer


def test_serve_a_model_from_s3_and_run_a_batch_an_s3_notification_starts(s3):
    client, env = s3.client, s3.env
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "model", "prompt": f"Count to {i}:", "max_tokens": 4, "temperature": 0}})
             for i in range(5)] + ["not json"]
    client.put_object(Bucket="jobs", Key="in/day1.jsonl", Body="\n".join(lines).encode())
    s = RealmServer(env=env, api_keys=(), model="s3://models/smollm2/model.gguf")
    try:
        assert s.model == "model", "the id is the object's file name"
        note = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                             "s3": {"bucket": {"name": "jobs"}, "object": {"key": "in/day1.jsonl"}}}]}
        status, answer = s.post_event(json.dumps(note), {"Content-Type": "application/json"})
        assert status == 202, answer
        batch = s.wait_batch(answer["batches"][0]["id"])
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
        out = client.get_object(Bucket="jobs", Key="in/day1.jsonl.out/output.jsonl")["Body"].read().decode()
        ids = sorted(json.loads(line)["custom_id"] for line in out.splitlines())
        assert ids == [f"q{i}" for i in range(5)]
        errors = client.get_object(Bucket="jobs", Key="in/day1.jsonl.out/errors.jsonl")["Body"].read().decode()
        assert json.loads(errors.splitlines()[0])["error"]["code"] == "invalid_json"
    finally:
        assert s.stop() == 0


def test_manifest_routes_send_results_where_they_say_and_turn_away_other_objects(s3, tmp_path):
    manifest = tmp_path / "realm.yaml"
    manifest.write_text("name: routed\nmodel:\n  uri: default\ntriggers:\n  events: [aws.s3.ObjectCreated]\n"
                        "  batch:\n    - prefix: incoming/\n      output: results/\n")
    s = RealmServer("--function", str(manifest), env=s3.env, api_keys=())
    line = json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/completions",
                       "body": {"model": s.model, "prompt": "Hi", "max_tokens": 2, "temperature": 0}})
    s3.client.put_object(Bucket="jobs", Key="incoming/day2/q.jsonl", Body=line.encode())

    def notify(key):
        note = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                             "s3": {"bucket": {"name": "jobs"}, "object": {"key": key}}}]}
        status, answer = s.post_event(json.dumps(note), {"Content-Type": "application/json"})
        assert status == 202, answer
        return answer["batches"]

    try:
        assert notify("elsewhere/q.jsonl") == [], "no route takes it"
        assert notify("results/day1/q.jsonl/output.jsonl") == [], "a route's own output"
        [started] = notify("incoming/day2/q.jsonl")
        batch = s.wait_batch(started["id"])
        assert batch["status"] == "completed", batch
        assert batch["output_file_id"] == "s3://jobs/results/day2/q.jsonl/output.jsonl"
        out = s3.client.get_object(Bucket="jobs", Key="results/day2/q.jsonl/output.jsonl")["Body"].read().decode()
        assert json.loads(out)["custom_id"] == "r1"
    finally:
        assert s.stop() == 0


def test_a_manifest_names_an_s3_model_and_its_sha256(s3, tmp_path, model_file):
    with open(model_file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    good = tmp_path / "good.yaml"
    good.write_text(f"name: pinned\nmodel:\n  uri: s3://models/smollm2/model.gguf\n  sha256: {digest}\n")
    s = RealmServer("--function", str(good), env=s3.env, api_keys=(), model=False)
    try:
        assert s.model == "model", "served from the object, named after it"
    finally:
        assert s.stop() == 0

    # Another cache, so the object is fetched again and checked against the wrong hash.
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: pinned\nmodel:\n  uri: s3://models/smollm2/model.gguf\n  sha256: " + "ab" * 32 + "\n")
    env = dict(s3.env, REALM_MODEL_CACHE=str(tmp_path / "other-cache"))
    s = RealmServer("--function", str(bad), env=env, api_keys=(), model=False, ready=False)
    try:
        deadline = time.monotonic() + 60
        status, body = s.get("/ready")
        while status != 503 or "failed to load" not in body:
            assert time.monotonic() < deadline, f"/ready never reported the failed load: {status} {body}"
            time.sleep(0.1)
            status, body = s.get("/ready")
        assert "sha256" in body and "ab" * 32 in body, body
    finally:
        s.stop()
