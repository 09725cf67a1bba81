"""`https://` models: a TLS server on loopback (Python's own, with a test CA from `trustme` that
realm trusts through SSL_CERT_FILE) serves the default model with byte ranges; `realm pull`
fetches it whole, a server that ignores ranges still works, and a missing file or an untrusted
certificate is a clear error."""

import hashlib
import os
import re
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

BIN = os.environ.get("REALM_BIN", "target/release/realm")


class Files(BaseHTTPRequestHandler):
    """Serves `files` (name → bytes); honours `Range` unless the server says not to."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ranged = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if ranged and self.server.ranges:
            start, end = int(ranged[1]), min(int(ranged[2]), len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            data = data[start:end + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def tls(tmp_path_factory, model_file):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(model_file, "rb") as f:
        server.files = {"models/model.gguf": f.read()}
    server.ranges = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, str(ca_file)
    server.shutdown()


def pull(tls, tmp_path, name, trust=True):
    server, ca_file = tls
    env = {**os.environ, "REALM_MODEL_CACHE": str(tmp_path / "cache")}
    if trust:
        env["SSL_CERT_FILE"] = ca_file
    uri = f"https://127.0.0.1:{server.server_address[1]}/{name}"
    return subprocess.run([BIN, "pull", uri], env=env, capture_output=True, text=True, timeout=300)


def fetched_sha256(tmp_path):
    [path] = list((tmp_path / "cache").glob("*.gguf"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no-ranges"])
def test_a_model_over_https_arrives_whole(tls, tmp_path, ranges):
    server, _ = tls
    server.ranges = ranges
    try:
        done = pull(tls, tmp_path, "models/model.gguf")
    finally:
        server.ranges = True
    assert done.returncode == 0, done.stderr
    assert fetched_sha256(tmp_path) == hashlib.sha256(server.files["models/model.gguf"]).hexdigest()


def test_https_errors_are_clear(tls, tmp_path):
    missing = pull(tls, tmp_path, "models/nope.gguf")
    assert missing.returncode != 0 and "no such object" in missing.stderr, missing.stderr
    untrusted = pull(tls, tmp_path, "models/model.gguf", trust=False)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower(), untrusted.stderr
