"""Batch jobs in the OpenAI Batch file format: `realm batch` resumes after a kill with every
custom_id exactly once, bad lines go to the error file, and an event starts a job whose status
`GET /v1/batches/{id}` shows, on local files (the object-store backends have their own tests)."""

import json
import os
import signal
import subprocess
import time

from cloudevents.core.bindings.http import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from conftest import API_KEY, RealmServer

BIN = os.environ.get("REALM_BIN", "target/release/realm")
MODEL = os.environ.get("REALM_TEST_MODEL", "default")


def write_input(path, n, bad=True, model="default"):
    lines = [json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": model, "messages": [{"role": "user", "content": f"Tell me about {i}."}],
                                  "max_tokens": 16, "temperature": 0, "ignore_eos": True}})
             for i in range(n)]
    if bad:
        lines.insert(3, "{not json")
        lines.insert(7, json.dumps({"custom_id": "req-1", "method": "POST", "url": "/v1/completions", "body": {}}))
        lines.append(json.dumps({"custom_id": "wrong-model", "method": "POST", "url": "/v1/completions",
                                 "body": {"model": "gpt-9", "prompt": "x"}}))
    path.write_text("\n".join(lines) + "\n")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_batch(inp, out, **kw):
    return subprocess.Popen([BIN, "batch", "--model", MODEL, "--threads", "2", "--max-batch", "8",
                             "--input", str(inp), "--output", str(out)], stderr=subprocess.PIPE, text=True, **kw)


def test_a_killed_batch_resumes_with_every_custom_id_exactly_once(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(inp, 120)
    first = run_batch(inp, out)
    deadline = time.monotonic() + 60
    while not list(out.glob("part-*.commit")):
        assert time.monotonic() < deadline and first.poll() is None, "no part was committed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "output.jsonl").exists(), "the first run was killed before the end"
    second = run_batch(inp, out)
    assert second.wait(120) == 0, second.stderr.read()
    results, errors = read_jsonl(out / "output.jsonl"), read_jsonl(out / "errors.jsonl")
    ids = [r["custom_id"] for r in results]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(120)), "every good line answered exactly once"
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)
    assert all(r["response"]["body"]["usage"]["completion_tokens"] == 16 for r in results)
    codes = sorted(e["error"]["code"] for e in errors)
    assert codes == ["404", "duplicate_custom_id", "invalid_json"], errors
    assert len({e["custom_id"] for e in errors}) == len(errors)


def test_batch_results_equal_the_same_requests_alone(tmp_path, client, server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(inp, 6, bad=False)
    assert run_batch(inp, out).wait(120) == 0
    for r in read_jsonl(out / "output.jsonl"):
        i = int(r["custom_id"].split("-")[1])
        alone = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": f"Tell me about {i}."}],
                                               max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
        assert r["response"]["body"]["choices"][0]["message"]["content"] == alone.choices[0].message.content


def test_an_event_starts_a_job_whose_status_is_visible(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out"
    s = RealmServer("--batch-local-root", str(tmp_path))
    write_input(inp, 10, model=s.model)
    try:
        ev = CloudEvent({"type": "dev.realm.batch.v1.requested", "source": "//test", "id": "e1", "specversion": "1.0",
                         "datacontenttype": "application/json"}, {"input": f"file://{inp}", "output": f"file://{out}/"})
        msg = to_binary(ev, JSONFormat())
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        conn.request("POST", "/events", msg.body, msg.headers)
        resp = conn.getresponse()
        accepted = json.loads(resp.read())
        assert resp.status == 202, accepted
        batch_id = accepted["batch"]["id"]
        # A redelivered event finds the same job.
        conn.request("POST", "/events", msg.body, msg.headers)
        again = conn.getresponse()
        assert again.status == 202 and json.loads(again.read())["batch"]["id"] == batch_id
        deadline = time.monotonic() + 120
        while True:
            status, body = s.get(f"/v1/batches/{batch_id}", auth=True)
            batch = json.loads(body)
            assert status == 200 and batch["object"] == "batch"
            if batch["status"] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": 13, "completed": 10, "failed": 3}
        assert batch["output_file_id"].endswith("out/output.jsonl")
        assert len(read_jsonl(out / "output.jsonl")) == 10
        assert s.get("/v1/batches/batch_nope", auth=True)[0] == 404
    finally:
        s.stop()


def test_bad_events_get_clear_errors_and_a_missing_input_loses_nothing(tmp_path):
    s = RealmServer("--batch-local-root", str(tmp_path))

    def post(kind, data, structured=None):
        if structured is not None:
            return s.post_event(structured, {"Content-Type": "application/cloudevents+json"})
        ev = CloudEvent({"type": kind, "source": "//test", "id": f"e-{time.monotonic_ns()}", "specversion": "1.0",
                         "datacontenttype": "application/json"}, data)
        msg = to_binary(ev, JSONFormat())
        return s.post_event(msg.body, msg.headers)

    try:
        status, body = post("com.example.unknown", {"input": "x"})
        assert status == 400 and body["error"]["param"] == "type", body
        status, body = post("dev.realm.batch.v1.requested", {"input": "ftp://host/in.jsonl", "output": "s3://b/o/"})
        assert status == 400 and body["error"]["param"] == "input" and "ftp" in body["error"]["message"], body
        status, body = post("dev.realm.batch.v1.requested", {"input": f"file://{tmp_path}/in.jsonl"})
        assert status == 400 and body["error"]["param"] == "data.output", body
        status, body = post("google.cloud.storage.object.v1.finalized", {"name": "in.jsonl"})
        assert status == 400 and body["error"]["param"] == "data.bucket", body
        status, body = post(None, None, structured=b'{"specversion": "1.0", "type": ')
        assert status == 400 and body["error"]["param"] == "cloudevent", body
        status, body = post("dev.realm.batch.v1.requested", {"input": "/etc/passwd", "output": "/tmp/x/"})
        assert status == 400 and body["error"]["param"] == "input", body

        # An input that does not exist yet: the job fails saying so; once the object is there,
        # the same event delivered again runs the job to the end.
        inp, out = tmp_path / "late.jsonl", tmp_path / "late-out"
        data = {"input": f"file://{inp}", "output": f"file://{out}/"}
        status, body = post("dev.realm.batch.v1.requested", data)
        assert status == 202, body
        batch = s.wait_batch(body["batch"]["id"])
        assert batch["status"] == "failed" and "no such object" in batch["errors"]["data"][0]["message"], batch
        write_input(inp, 4, bad=False, model=s.model)
        status, body = post("dev.realm.batch.v1.requested", data)
        assert status == 202, body
        batch = s.wait_batch(body["batch"]["id"])
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 4, batch
        assert sorted(r["custom_id"] for r in read_jsonl(out / "output.jsonl")) == [f"req-{i}" for i in range(4)]
    finally:
        assert s.stop() == 0

