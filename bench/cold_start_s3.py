"""Cold start from an object store (issue 6): `realm serve --model s3://...` with an empty model
cache, exec → first 200 from /ready, against a plain single-stream download of the same object
(`curl`, one GET, exec → exit), on a local S3 server over loopback.

Per store, runs alternate: realm from an empty cache, curl, realm with the model already in the
cache (what the fetch adds is the difference). Realm's own split comes from its /metrics
(realm_startup_seconds{phase="model_fetch"|"model_load"}). Medians (min-max) go to a table and,
unless --no-record, to bench/RESULTS.md.

Stores: s3rver (npm; serves a ranged GET by reading just that range) and moto (PyPI; reads the
whole object for every ranged GET, so parallel ranged fetches cost it several whole reads).
Normally run through bench/cold-start-s3.sh, which installs s3rver and builds realm.
"""

import argparse
import datetime
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import serve_common as sc

BUCKET = "models"
KEY = "bench/model.gguf"
CREDENTIALS = {"moto": ("test", "test"), "s3rver": ("S3RVER", "S3RVER")}


class Store:
    """A local S3 server on a free loopback port, holding the model."""

    def __init__(self, kind, model, s3rver_bin, log_dir):
        self.kind = kind
        self.port = sc.free_port()
        self.data = tempfile.mkdtemp(prefix=f"realm-{kind}-")
        log = open(os.path.join(log_dir, f"{kind}.log"), "wb")
        if kind == "moto":
            argv = [sys.executable, "-m", "moto.server", "-H", sc.HOST, "-p", str(self.port)]
        else:
            argv = [s3rver_bin, "-d", self.data, "-a", sc.HOST, "-p", str(self.port), "--silent"]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.endpoint = f"http://{sc.HOST}:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection(sc.HOST, self.port, timeout=1)
                conn.request("GET", "/")
                conn.getresponse().read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start on port {self.port}")
                time.sleep(0.05)
        import boto3

        key_id, secret = CREDENTIALS[kind]
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key_id,
                              aws_secret_access_key=secret, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(model, BUCKET, KEY)
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key_id,
                    "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1", "REALM_S3_FORCE_PATH_STYLE": "true"}

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        shutil.rmtree(self.data, ignore_errors=True)


def startup_phases(port):
    conn = http.client.HTTPConnection(sc.HOST, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    phases = {}
    for line in text.splitlines():
        if line.startswith("realm_startup_seconds{"):
            label = line.split('phase="', 1)[1].split('"', 1)[0]
            phases[label] = float(line.rsplit(" ", 1)[1])
    return phases


def realm_run(a, store, cache, log_path):
    side = sc.Side("realm", sc.REALM_TEMPLATE, "/ready", a.realm_bin)
    port = sc.free_port()
    argv = side.argv(f"s3://{BUCKET}/{KEY}", port, a.threads)
    saved = os.environ.copy()
    os.environ.update(store.env, REALM_MODEL_CACHE=cache)
    try:
        sc.wait_quiet(a.quiet_wait)
        srv = sc.Server(side, argv, port, log_path)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        ready = srv.wait_ready()
        phases = startup_phases(port)
        return {"ready_ms": ready * 1e3, "fetch_ms": phases.get("model_fetch", float("nan")) * 1e3,
                "load_ms": phases.get("model_load", float("nan")) * 1e3, "argv": argv}
    finally:
        srv.stop()


def curl_run(a, store, target):
    sc.wait_quiet(a.quiet_wait)
    t0 = time.perf_counter()
    done = subprocess.run(["curl", "--silent", "--show-error", "--fail", "-o", target,
                           f"{store.endpoint}/{BUCKET}/{KEY}"], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"curl from {store.kind}: {done.stderr.strip()}")
    size = os.path.getsize(target)
    os.remove(target)
    if size != os.path.getsize(a.model):
        raise RuntimeError(f"curl from {store.kind} got {size} bytes")
    return {"ms": elapsed * 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/realm/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--realm-bin", default="target/release/realm")
    ap.add_argument("--s3rver-bin", help="s3rver's executable (bench/cold-start-s3.sh installs it)")
    ap.add_argument("--stores", default="s3rver,moto", help="comma-separated: s3rver, moto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="runs per side and store (alternating)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait before each start for other processes to leave the cores")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    a = ap.parse_args()
    stores = [s.strip() for s in a.stores.split(",") if s.strip()]
    if not stores or any(s not in CREDENTIALS for s in stores):
        sys.exit(f"cold_start_s3: --stores must name some of {', '.join(CREDENTIALS)}")
    if "s3rver" in stores and not (a.s3rver_bin and os.path.isfile(a.s3rver_bin)):
        sys.exit("cold_start_s3: --s3rver-bin must name s3rver's executable (bench/cold-start-s3.sh installs it)")
    if not 1 <= a.runs <= 50:
        sys.exit("cold_start_s3: --runs must be 1..50")
    if not os.path.isfile(a.model) or shutil.which("curl") is None:
        sys.exit(f"cold_start_s3: needs the model file ({a.model}) and curl")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log_dir = tempfile.mkdtemp(prefix="realm-cold-s3-")
    load_before = open("/proc/loadavg").read().split()[:3]
    rows = ["| store | realm exec → ready, empty cache ms | of which fetch ms | of which load ms | "
            "curl single GET ms | realm fetch / curl | realm exec → ready, model cached ms |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    argv = None
    for kind in stores:
        store = Store(kind, a.model, a.s3rver_bin, log_dir)
        cold, plain, warm = [], [], []
        try:
            warm_cache = tempfile.mkdtemp(prefix="realm-cache-warm-")
            realm_run(a, store, warm_cache, os.path.join(log_dir, f"{kind}-fill-cache.log"))
            for run in range(1, a.runs + 1):
                cache = tempfile.mkdtemp(prefix="realm-cache-")
                out = realm_run(a, store, cache, os.path.join(log_dir, f"{kind}-cold-{run}.log"))
                shutil.rmtree(cache)
                argv = out.pop("argv")
                cold.append(out)
                plain.append(curl_run(a, store, os.path.join(log_dir, "curl.gguf")))
                warm.append(realm_run(a, store, warm_cache, os.path.join(log_dir, f"{kind}-warm-{run}.log")))
                print(f"cold_start_s3: {kind} run {run}/{a.runs}: realm cold {cold[-1]['ready_ms']:.0f} ms "
                      f"(fetch {cold[-1]['fetch_ms']:.0f}), curl {plain[-1]['ms']:.0f} ms, realm cached "
                      f"{warm[-1]['ready_ms']:.0f} ms", file=sys.stderr)
            shutil.rmtree(warm_cache)
        finally:
            store.stop()
        col = lambda runs, k: [r[k] for r in runs]
        ratio = sc.median(col(cold, "fetch_ms")) / sc.median(col(plain, "ms"))
        rows.append(f"| {kind} | {sc.spread(col(cold, 'ready_ms'))} | {sc.spread(col(cold, 'fetch_ms'))} | "
                    f"{sc.spread(col(cold, 'load_ms'))} | {sc.spread(col(plain, 'ms'))} | {ratio:.2f}x | "
                    f"{sc.spread(col(warm, 'ready_ms'))} |")
    print("\n" + "\n".join(rows))
    if a.no_record:
        return
    cpu, ncpu, flags = sc.machine()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    side = sc.Side("realm", sc.REALM_TEMPLATE, "/ready", a.realm_bin)
    md = [f"\n## {datetime.date.today().isoformat()}: cold start from a local S3 server, "
          f"{os.path.basename(a.model)}, {a.threads} threads\n",
          f"- CPU: {cpu} ({ncpu} logical CPUs); flags: {flags}",
          f"- model: `{a.model}` ({os.path.getsize(a.model)} bytes), uploaded to each store as s3://{BUCKET}/{KEY}",
          f"- realm {sc.realm_commit(side, root)}: `{sc.shown(argv)}` with REALM_MODEL_CACHE an empty folder "
          f"(or, last column, one the model was fetched into before); fetch and load from its "
          f"realm_startup_seconds metric",
          f"- baseline: `curl -o FILE http://127.0.0.1:PORT/{BUCKET}/{KEY}` (one GET), exec → exit",
          f"- {a.runs} runs per store alternating realm (empty cache), curl, realm (cached); medians (min-max); "
          f"store, client and realm share the machine's cores over loopback; load average before: "
          f"{' '.join(load_before)}",
          ""] + rows
    sc.record(a.results, md)
    print(f"recorded in {a.results}")


if __name__ == "__main__":
    main()
