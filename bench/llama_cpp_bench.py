"""llama.cpp's side of bench/vs-llama-cpp.sh, through llama-cpp-python.

Times what `realm bench` times, the same way: prefill is one `eval` of a P-token prompt
(fresh sequence); decode is G tokens after it, the first taken from the prefill's logits and
G - 1 more from single-token `eval` steps, greedy. Prints one JSON object with the samples of
every timed run (after --warmup untimed ones).

--feed-one-by-one feeds the prompt a token at a time, untimed, before decode: for builds that
die on multi-token batches (llama-cpp-python's default build with AMX and gcc 12).
--golden FILE compares the logits after each reference prompt with the reference's top 10.
--probe evaluates a two-token prompt and exits: a crash there means --feed-one-by-one.
"""

import argparse
import json
import sys
import time
from itertools import cycle, islice

import numpy as np
import llama_cpp

# Same text as `realm bench` (src/bench.rs): prompts are it, repeated and cut to length.
PROMPT_TEXT = (
    "The history of computing is a story of machines that learned to remember. "
    "Early mechanical calculators kept their state in gears and levers; later, vacuum tubes and "
    "magnetic cores held numbers for a few microseconds at a time. Each generation of memory was "
    "faster and denser than the last, and each one changed what programmers believed was possible."
)
GOLDEN_TOLERANCE = 1.0


def last_logits(llm):
    # With logits_all=False, eval() (0.3.x) no longer copies logits into llm.scores; the
    # context holds the last token's row.
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def feed(llm, tokens, one_by_one):
    if one_by_one:
        for t in tokens:
            llm.eval([t])
    else:
        llm.eval(tokens)


def prompt_of(llm, n):
    body = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False, special=False)
    return list(islice(cycle(body), n))


def time_prefill(llm, prompt):
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    int(np.argmax(last_logits(llm)))
    elapsed = time.perf_counter() - start
    return len(prompt) / elapsed, elapsed


def time_decode(llm, prompt, gen, one_by_one):
    llm.reset()
    feed(llm, prompt, one_by_one)
    tok = int(np.argmax(last_logits(llm)))
    start = time.perf_counter()
    for _ in range(gen - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm)))
    return (gen - 1) / (time.perf_counter() - start)


def golden_check(llm, path, one_by_one):
    worst = 0.0
    worst_id = None
    records = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            llm.reset()
            feed(llm, r["prompt_ids"], one_by_one)
            logits = last_logits(llm)
            for tok, ref in r["top10_after_prompt"]:
                d = abs(float(logits[tok]) - ref)
                if d > worst:
                    worst, worst_id = d, r["id"]
            records += 1
    return {
        "records": records,
        "max_abs_diff": worst,
        "worst_record": worst_id,
        "tolerance": GOLDEN_TOLERANCE,
        "ok": records > 0 and worst <= GOLDEN_TOLERANCE,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", default="128,512")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--measure", choices=["prefill", "decode", "both", "none"], default="both")
    ap.add_argument("--feed-one-by-one", action="store_true")
    ap.add_argument("--golden")
    ap.add_argument("--probe", action="store_true")
    a = ap.parse_args()

    lengths = [int(p) for p in a.prompt_tokens.split(",") if p]
    if a.gen_tokens < 2 or not lengths or min(lengths) < 1:
        sys.exit("llama_cpp_bench: need --gen-tokens >= 2 and positive prompt lengths")
    n_ctx = max(max(lengths) + a.gen_tokens, 512) + 16
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=n_ctx,
        n_batch=512,
        logits_all=False,
        verbose=False,
    )
    if a.probe:
        llm.eval(llm.tokenize(b"Hello world", add_bos=False, special=False)[:2])
        print(json.dumps({"probe": "ok"}))
        return

    out = {
        "llama_cpp_python": llama_cpp.__version__,
        "threads": a.threads,
        "n_ctx": n_ctx,
        "n_batch": 512,
        "feed_one_by_one": a.feed_one_by_one,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "runs": [],
    }
    if a.golden:
        out["golden"] = golden_check(llm, a.golden, a.feed_one_by_one)
    for p in lengths if a.measure != "none" else []:
        prompt = prompt_of(llm, p)
        run = {"prompt_tokens": p, "gen_tokens": a.gen_tokens}
        if a.measure in ("prefill", "both"):
            for _ in range(a.warmup):
                time_prefill(llm, prompt)
            samples = [time_prefill(llm, prompt) for _ in range(a.repeat)]
            run["prefill_tok_s"] = [s[0] for s in samples]
            run["ttft_ms"] = [s[1] * 1e3 for s in samples]
        if a.measure in ("decode", "both"):
            for _ in range(a.warmup):
                time_decode(llm, prompt, a.gen_tokens, a.feed_one_by_one)
            run["decode_tok_s"] = [
                time_decode(llm, prompt, a.gen_tokens, a.feed_one_by_one) for _ in range(a.repeat)
            ]
        out["runs"].append(run)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
