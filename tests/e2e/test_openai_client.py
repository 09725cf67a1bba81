"""The official `openai` Python client against a live `realm serve` on the default model."""

import concurrent.futures
import http.client
import json
import math
import signal
import time

import openai
import pytest

from conftest import API_KEY, RealmServer

# Greedy decoding answers this with a clear margin at every token up to "Paris" in both
# precisions; "What is the capital of France?" starts at a near-tie in fast precision (0.04
# nats between "The" and "L"), which any change of rounding could flip.
QUESTION = "Name the capital of France."


def chat(client, model, content, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]
    assert models.data[0].owned_by == "realm"


def test_chat_answers_the_question(client, server):
    r = chat(client, server.model, QUESTION, max_tokens=32)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.system_fingerprint


def test_chat_stream_with_usage_matches_the_plain_answer(client, server):
    plain = chat(client, server.model, QUESTION, max_tokens=32)
    stream = chat(client, server.model, QUESTION, max_tokens=32, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_with_content_parts_system_and_max_completion_tokens(client, server):
    r = client.chat.completions.create(
        model=server.model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        ],
        max_completion_tokens=3,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_stop_strings_end_generation_and_are_not_returned(client, server):
    r = chat(client, server.model, QUESTION, max_tokens=32, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content.startswith("The capital of France is")


def test_chat_logprobs(client, server):
    r = chat(client, server.model, QUESTION, max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens or r.choices[0].finish_reason == "stop"
    for tok in content:
        assert tok.logprob <= 0
        assert len(tok.top_logprobs) == 3
        lps = [t.logprob for t in tok.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert tok.token == tok.top_logprobs[0].token
        assert math.isclose(tok.logprob, lps[0], abs_tol=1e-5)
    assert "".join(t.token for t in content).startswith("The capital")


def test_n_choices_with_a_seed_repeat(client, server):
    kw = dict(model=server.model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12,
              temperature=1.0, n=3, seed=42)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1, "choices draw differently"


def test_completions_text_and_token_prompts(client, server):
    r = client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    r2 = client.completions.create(model=server.model, prompt=[[504, 3575, 282, 4649, 314]], max_tokens=4, temperature=0)
    assert r2.choices[0].finish_reason == "length"
    assert r2.usage.prompt_tokens == 5


def test_completions_stream(client, server):
    plain = client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=16, temperature=0)
    chunks = list(client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=16,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text


def test_echo_with_logprobs_scores_the_prompt(client, server):
    r = client.completions.create(model=server.model, prompt="The capital of France is Paris", max_tokens=0,
                                  echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "The capital of France is Paris"
    assert len(lp.tokens) == r.usage.prompt_tokens
    assert lp.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == "The capital of France is Paris"
    # " Paris" after "The capital of France is" is likely; a random token is not.
    unlikely = client.completions.create(model=server.model, prompt="The capital of France is sandwich",
                                         max_tokens=0, echo=True, logprobs=0, temperature=0)
    assert lp.token_logprobs[-1] > unlikely.choices[0].logprobs.token_logprobs[-1] + 3


def test_wrong_key_is_an_authentication_error(server):
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, "gpt-17", QUESTION)
    assert e.value.body["code"] == "model_not_found"
    assert e.value.body["param"] == "model"


def test_bad_fields_are_bad_requests_naming_the_field(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, server.model, QUESTION, extra_body={"frobnicate": True})
    assert e.value.body["param"] == "frobnicate"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, server.model, QUESTION, temperature=7)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, server.model, QUESTION, tools=[{"type": "function", "function": {"name": "f"}}])
    assert e.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, server.model, QUESTION, response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"


def test_prompt_past_the_context_names_both_numbers(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, server.model, QUESTION, max_tokens=1_000_000)
    message = e.value.body["message"]
    assert e.value.body["code"] == "context_length_exceeded"
    assert "1000000" in message and "8192" in message


def test_rate_limit_is_a_rate_limit_error():
    s = RealmServer("--rate-limit-rpm", "1")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key=API_KEY, max_retries=0)
        chat(c, s.model, "Hi", max_tokens=1)
        with pytest.raises(openai.RateLimitError) as e:
            chat(c, s.model, "Hi", max_tokens=1)
        assert int(e.value.response.headers["retry-after"]) >= 1
    finally:
        assert s.stop() == 0


PROMPTS = [f"Write one sentence about the number {i}." for i in range(32)]


def test_32_concurrent_streams_each_equal_the_prompt_alone(client, server):
    def stream_text(prompt):
        s = chat(client, server.model, prompt, max_tokens=20, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    alone = [chat(client, server.model, p, max_tokens=20) for p in PROMPTS]
    steps_before = server.metric("realm_engine_steps_total")
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        together = list(pool.map(stream_text, PROMPTS))
    for p, a, t in zip(PROMPTS, alone, together):
        assert t == a.choices[0].message.content, f"{p!r}: alone {a!r}, in a batch {t!r}"
    # Alone, every token costs a forward step; batched, one step serves many streams.
    tokens = sum(a.usage.completion_tokens for a in alone)
    steps = server.metric("realm_engine_steps_total") - steps_before
    assert steps < tokens / 4, f"{steps} steps for {tokens} tokens"


def raw_stream(server, body):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    return conn, conn.getresponse()


def test_a_client_that_drops_mid_stream_frees_its_slot(server, client):
    before = server.metric("realm_request_finished_total", 'finished_reason="cancelled"')
    body = {"model": server.model, "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 4000, "temperature": 0, "stream": True, "ignore_eos": True}
    conn, resp = raw_stream(server, body)
    assert resp.status == 200
    assert resp.getheader("Cache-Control") == "no-cache"
    assert resp.getheader("X-Accel-Buffering") == "no"
    data_lines = 0
    while data_lines < 4:
        line = resp.readline()
        assert line, "the stream ended early"
        data_lines += line.startswith(b"data: ")
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (server.metric("realm_request_finished_total", 'finished_reason="cancelled"') > before
                and server.metric("realm_num_requests_running") == 0
                and server.metric("realm_num_requests_in_flight") == 0):
            break
        time.sleep(0.05)
    assert server.metric("realm_request_finished_total", 'finished_reason="cancelled"') == before + 1
    assert server.metric("realm_num_requests_running") == 0
    assert server.metric("realm_kv_cache_blocks_in_use") == 0
    assert "Paris" in chat(client, server.model, QUESTION, max_tokens=16).choices[0].message.content


def test_sigterm_lets_running_streams_finish_and_exits_zero():
    s = RealmServer()
    body = {"model": s.model, "messages": [{"role": "user", "content": "Tell me about rivers."}],
            "max_tokens": 48, "temperature": 0, "stream": True, "ignore_eos": True}
    streams = [raw_stream(s, body) for _ in range(3)]
    for _, resp in streams:
        assert resp.readline().startswith(b"data: ")
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        conn.request("GET", "/v1/models")
        conn.getresponse()
    for conn, resp in streams:
        rest = resp.read().decode()
        assert '"finish_reason":"length"' in rest
        assert rest.rstrip().endswith("data: [DONE]")
        conn.close()
    assert s.proc.wait(30) == 0
