"""Cold start of `realm serve` against llama.cpp's `llama-server`, side by side (issue 4, item 9).

Each run starts a server on a free loopback port and times, from just before fork+exec:
  ready        the first 200 from the readiness route (realm: GET /ready; llama-server:
               GET /health, which answers 503 until the model is loaded), polled every 5 ms;
  first token  then one streamed chat completion (temperature 0): time to its first content
               frame from the request, and from exec.
Runs alternate realm, llama-server, realm, ... (--runs each); medians (min-max) and the ratios
realm / llama-server are printed as a table and, unless --no-record, appended to
bench/RESULTS.md. The model file is in the page cache for both sides after the first run
(--drop-caches empties it before every start, where the machine allows it).

Normally run through bench/serve-cold-start.sh, which finds or builds both binaries.
"""

import argparse
import datetime
import os
import signal
import sys
import tempfile

import serve_common as sc

PROMPT = "Write one sentence about the sea."


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def one_run(side, a, log_dir, run):
    port = sc.free_port()
    argv = side.argv(a.model, port, a.threads, slots=1, ctx=a.ctx)
    if a.drop_caches:
        drop_caches()
    sc.wait_quiet(a.quiet_wait)
    srv = sc.Server(side, argv, port, os.path.join(log_dir, f"{side.name}-{run}.log"))
    try:
        ready = srv.wait_ready()
        r = sc.stream_chat(port, PROMPT, a.max_tokens)
        if r.error or r.ttft is None:
            raise RuntimeError(f"{side.name}: first request failed: {r.error or 'no content frame'}; "
                               f"log {srv.log_path}:\n{sc.tail(srv.log_path)}")
        return {"ready_ms": ready * 1e3, "ttft_ms": r.ttft * 1e3,
                "first_token_ms": (r.t_chunks[0] - srv.t_exec) * 1e3, "argv": argv,
                "other_cpu": srv.watch.foreign_share() * 100}
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sc.add_side_args(ap)
    ap.add_argument("--runs", type=int, default=5, help="runs per side (alternating)")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens of the first request")
    ap.add_argument("--ctx", type=int, default=2048, help="llama-server's -c (KV cache tokens)")
    ap.add_argument("--drop-caches", action="store_true", help="empty the page cache before each start (root)")
    a = ap.parse_args()
    if a.runs < 1 or a.runs > 100:
        sys.exit("serve_cold_start: --runs must be 1..100")
    if not os.path.isfile(a.model):
        sys.exit(f"serve_cold_start: no model file {a.model}")
    # SIGTERM unwinds like Ctrl-C, so the servers' `finally` stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    realm, llama = sc.sides_from_args(a)
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="realm-serve-cold-")
    os.makedirs(log_dir, exist_ok=True)
    load_before = open("/proc/loadavg").read().split()[:3]
    res = {realm.name: [], llama.name: []}
    argv = {}
    for run in range(1, a.runs + 1):
        for side in (realm, llama):
            out = sc.measure_quietly(lambda: one_run(side, a, log_dir, run), a.busy_retries,
                                     f"serve_cold_start: run {run} {side.name}")
            argv[side.name] = out.pop("argv")
            res[side.name].append(out)
            print(f"serve_cold_start: run {run}/{a.runs} {side.name:>12}: ready {out['ready_ms']:.1f} ms, "
                  f"first-request TTFT {out['ttft_ms']:.1f} ms, other processes {out['other_cpu']:.0f}% CPU",
                  file=sys.stderr)

    # Runs that competed with other processes for the cores are left out when a quiet one exists.
    col = lambda name, key: [x[key] for x in sc.quiet_runs(res[name])]
    keys = [("ready_ms", "exec → ready ms"), ("ttft_ms", "first request TTFT ms"),
            ("first_token_ms", "exec → first token ms"), ("other_cpu", "other processes' CPU %")]
    header = "| server | " + " | ".join(k[1] for k in keys) + " | runs used |"
    rows = [header, "|---|" + "---:|" * (len(keys) + 1)]
    for name in (realm.name, llama.name):
        rows.append(f"| {name} | " + " | ".join(sc.spread(col(name, k)) for k, _ in keys)
                    + f" | {len(sc.quiet_runs(res[name]))}/{len(res[name])} |")
    ratios = {k: sc.median(col(realm.name, k)) / sc.median(col(llama.name, k)) for k, _ in keys[:3]}
    rows.append("| ratio realm / llama-server | " + " | ".join(f"{ratios[k]:.2f}x" for k, _ in keys[:3]) + " | | |")
    print("\n" + "\n".join(rows))
    verdict = "meets" if ratios["ready_ms"] <= 0.2 else "misses"
    summary = (f"exec → ready: realm {ratios['ready_ms']:.3f}x llama-server's ({verdict} issue 4's target of "
               f"at most 1/5)")
    print(summary)
    busy = [f"{name} run {i + 1}" for name in res for i, x in enumerate(res[name])
            if x["other_cpu"] > sc.BUSY_SHARE_PCT]
    if busy:
        summary += (f"; other processes took over 10% of the cores during {', '.join(busy)} (after "
                    f"{a.busy_retries} retries): those runs are left out where the server has quiet ones")
        print("WARNING: " + summary.split("; ", 1)[1])

    if a.no_record:
        return
    cpu, ncpu, flags = sc.machine()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    md = [f"\n## {datetime.date.today().isoformat()}: serve cold start, {os.path.basename(a.model)}, "
          f"{a.threads} threads\n",
          f"- CPU: {cpu} ({ncpu} logical CPUs); flags: {flags}",
          f"- model: `{a.model}` ({os.path.getsize(a.model)} bytes)",
          f"- realm {sc.realm_commit(realm, root)}: `{sc.shown(argv[realm.name])}` (ready route "
          f"{realm.ready_path})",
          f"- llama-server ({sc.llama_version(llama.binary)}, built by bench/build-llama-server.sh): "
          f"`{sc.shown(argv[llama.name])}` (ready route /health)",
          f"- {a.runs} runs alternating realm, llama-server; each run: fork+exec → first 200 from the ready "
          f"route (polled every {sc.POLL_INTERVAL_S * 1e3:.0f} ms over loopback), then one streamed chat "
          f"request (max_tokens {a.max_tokens}, temperature 0), TTFT to its first content frame; page cache "
          f"{'emptied before each start' if a.drop_caches else 'warm (model file read before)'}; "
          f"medians (min-max); other processes' CPU is their share of all cores from exec to the end of the "
          f"first request (a run with over 10% is taken again up to {a.busy_retries} times, and left out when "
          f"the server has quiet runs; each start waits up to {a.quiet_wait:.0f} s for it to fall under 25%); "
          f"load average before: {' '.join(load_before)}",
          ""] + rows + ["", f"- {summary}"]
    sc.record(a.results, md)
    print(f"recorded in {a.results}")


if __name__ == "__main__":
    main()
