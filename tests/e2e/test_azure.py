"""Realm against Azure Blob Storage's emulator on loopback (Azurite, from npm): `realm serve
--model az://...` fetches the default model from a container and serves it, and Event Grid's
`Microsoft.Storage.BlobCreated` (CloudEvents schema) starts a batch job whose results are read
back from the container. The blobs are written and read with Azure's official Python SDK."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import RealmServer, batch_lines, check_results, deliver, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
# Azurite's well-known development account (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def azure(tmp_path_factory, model_file):
    from azure.storage.blob import BlobServiceClient

    launcher = subprocess.run(["bash", str(ROOT / "scripts/setup-azurite.sh")], capture_output=True, text=True,
                              check=True).stdout.strip()
    port = free_port()
    proc = subprocess.Popen([launcher, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--silent", "--disableTelemetry"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "Azurite")
        connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                      f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
        # The newest service version Azurite 3.37.0 knows (the Python SDK would ask a newer one).
        client = BlobServiceClient.from_connection_string(connection, api_version="2026-04-06")
        for name in ("models", "jobs"):
            client.create_container(name)
        with open(model_file, "rb") as f:
            client.get_blob_client("models", "smollm2/model.gguf").upload_blob(f)
        env = {"AZURE_STORAGE_CONNECTION_STRING": connection,
               "REALM_MODEL_CACHE": str(tmp_path_factory.mktemp("az-cache"))}
        yield client, env
    finally:
        proc.kill()
        proc.wait()


def test_a_model_from_azure_blob_serves_and_a_blob_created_event_runs_a_batch(azure):
    client, env = azure
    s = RealmServer(env=env, api_keys=(), model="az://models/smollm2/model.gguf")
    try:
        assert s.model == "model", "the id is the blob's file name"
        client.get_blob_client("jobs", "in/day1.jsonl").upload_blob(batch_lines(s.model, 5).encode())
        url = f"https://{AZURITE_ACCOUNT}.blob.core.windows.net/jobs/in/day1.jsonl"
        batch = deliver(s, "Microsoft.Storage.BlobCreated", {"api": "PutBlob", "url": url})
        assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
        assert batch["output_file_id"] == "az://jobs/in/day1.jsonl.out/output.jsonl"
        read = lambda name: client.get_blob_client("jobs", name).download_blob().readall().decode()
        check_results(read("in/day1.jsonl.out/output.jsonl"), read("in/day1.jsonl.out/errors.jsonl"), 5)
    finally:
        assert s.stop() == 0


def test_a_missing_blob_is_a_clear_error(azure):
    done = subprocess.run([os.environ.get("REALM_BIN", "target/release/realm"), "pull", "az://models/nope.gguf"],
                          env={**os.environ, **azure[1]}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no such object" in done.stderr, done.stderr
