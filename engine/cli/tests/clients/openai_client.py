"""The official `openai` Python client, unchanged, against `bitnet serve` (base URL in argv[1]).

Run by engine/cli/tests/openai_client.rs; exits non-zero with a message on the first mismatch.
"""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0)

models = client.models.list()
ids = [m.id for m in models.data]
assert ids == ["story"], ids

c = client.completions.create(model="story", prompt="Once upon a time", max_tokens=12, temperature=0)
text = c.choices[0].text
assert text.startswith(", there was a little girl"), text
assert c.choices[0].finish_reason == "length", c.choices[0].finish_reason
assert c.usage.completion_tokens == 12 and c.usage.prompt_tokens == 5, c.usage

pieces = []
finish = None
for chunk in client.completions.create(model="story", prompt="Once upon a time", max_tokens=12,
                                       temperature=0, stream=True):
    pieces.append(chunk.choices[0].text)
    finish = chunk.choices[0].finish_reason or finish
assert "".join(pieces) == text, (pieces, text)
assert finish == "length"

chat = client.chat.completions.create(
    model="story", messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=10,
    temperature=0, seed=7)
msg = chat.choices[0].message
assert msg.role == "assistant" and msg.content, msg

deltas = []
usage = None
stream = client.chat.completions.create(
    model="story", messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=10,
    temperature=0, seed=7, stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            deltas.append(ch.delta.content)
assert "".join(deltas) == msg.content, (deltas, msg.content)
assert usage is not None and usage.completion_tokens == 10, usage

# Log-probabilities, whole and streamed, through the client's own types.
lp = client.chat.completions.create(
    model="story", messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=6,
    temperature=0, logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
assert len(content) == lp.usage.completion_tokens, content
assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content), content
assert "".join(t.token for t in content) == lp.choices[0].message.content, content
streamed = []
for chunk in client.chat.completions.create(
        model="story", messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=3, stream=True):
    for ch in chunk.choices:
        if ch.logprobs and ch.logprobs.content:
            streamed.extend(ch.logprobs.content)
assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
c = client.completions.create(model="story", prompt="Once upon a time", max_tokens=4, temperature=0,
                              logprobs=2)
assert len(c.choices[0].logprobs.tokens) == 4 and len(c.choices[0].logprobs.top_logprobs[0]) == 2, c

try:
    client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

try:
    client.completions.create(model="story", prompt="x", max_tokens=1, n=3)
    raise AssertionError("n=3 must fail")
except openai.BadRequestError as e:
    assert "n = 1" in e.message, e.message

print("openai", openai.__version__, "client: all checks passed")
