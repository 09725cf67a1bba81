"""Realm against Google Cloud Storage's JSON API on loopback (gcp-storage-emulator, from PyPI):
`realm serve --model gs://...` fetches the default model from a bucket and serves it, and
Eventarc's `google.cloud.storage.object.v1.finalized` starts a batch job whose results are read
back from the bucket. The objects are written and read with Google's official Python client;
realm reaches the emulator as Google's clients do, through STORAGE_EMULATOR_HOST."""

import os
import subprocess
import sys

import pytest

from conftest import RealmServer, batch_lines, check_results, deliver, free_port, wait_for_port

FINALIZED = "google.cloud.storage.object.v1.finalized"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory, model_file):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"), "start",
                             "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "gcp-storage-emulator")
        endpoint = f"http://127.0.0.1:{port}"
        client = storage.Client(project="realm-test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint})
        for name in ("models", "jobs"):
            client.create_bucket(name)
        client.bucket("models").blob("smollm2/model.gguf").upload_from_filename(model_file)
        env = {"STORAGE_EMULATOR_HOST": endpoint, "REALM_MODEL_CACHE": str(tmp_path_factory.mktemp("gs-cache"))}
        yield client, env
    finally:
        proc.kill()
        proc.wait()


def test_a_model_from_gcs_serves_and_a_finalized_event_runs_a_batch(gcs):
    client, env = gcs
    s = RealmServer(env=env, api_keys=(), model="gs://models/smollm2/model.gguf")
    try:
        assert s.model == "model", "the id is the object's file name"
        blob = client.bucket("jobs").blob("in/day1.jsonl")
        blob.upload_from_string(batch_lines(s.model, 5).encode(), content_type="application/jsonl")
        blob.reload()
        # Eventarc's data is the object's resource (StorageObjectData); the source names the bucket.
        data = {"kind": "storage#object", "bucket": "jobs", "name": blob.name, "size": str(blob.size),
                "generation": str(blob.generation), "contentType": blob.content_type}
        batch = deliver(s, FINALIZED, data, source="//storage.googleapis.com/projects/_/buckets/jobs")
        assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
        assert batch["output_file_id"] == "gs://jobs/in/day1.jsonl.out/output.jsonl"
        read = lambda name: client.bucket("jobs").blob(name).download_as_bytes().decode()
        check_results(read("in/day1.jsonl.out/output.jsonl"), read("in/day1.jsonl.out/errors.jsonl"), 5)
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("uri, says", [
    ("gs://models/nope.gguf", "no such object"),
    ("gs://no-such-bucket/m.gguf", "no such bucket"),
    ("gs://Models_Bucket!/m.gguf", "GCS bucket names"),
])
def test_a_missing_object_or_bucket_and_a_bad_bucket_name_are_clear_errors(gcs, uri, says):
    done = subprocess.run([os.environ.get("REALM_BIN", "target/release/realm"), "pull", uri],
                          env={**os.environ, **gcs[1]}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert "panicked" not in done.stderr, done.stderr
