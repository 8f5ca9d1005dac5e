"""The official OpenAI Python client against a running `dllm serve` (tests/serve.rs starts it).

Usage: python3 tests/openai_client.py http://127.0.0.1:PORT/v1   (API key "k")
"""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key="k")

models = client.models.list()
model = models.data[0].id
assert models.data[0].object == "model"
assert client.models.retrieve(model).id == model

c = client.completions.create(model=model, prompt="Hello world", max_tokens=40)
assert c.object == "text_completion", c
assert isinstance(c.choices[0].text, str)
assert c.choices[0].finish_reason in ("stop", "length")
assert c.usage.prompt_tokens == 11 and c.usage.completion_tokens <= 40

question = [{"role": "user", "content": "What is 12 plus 30?"}]
chat = client.chat.completions.create(
    model=model, messages=question, max_tokens=64, seed=1,
    extra_body={"cache": "prefix", "threshold": 0.8})
text = chat.choices[0].message.content
assert chat.choices[0].message.role == "assistant"

# text parts and the developer role are valid message shapes
parts = client.chat.completions.create(
    model=model, max_tokens=64, seed=1, extra_body={"cache": "prefix", "threshold": 0.8},
    messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
              {"role": "user", "content": [{"type": "text", "text": "What is 12 plus 30?"}]}])
assert parts.choices[0].message.role == "assistant"

stream = client.chat.completions.create(
    model=model, messages=question, max_tokens=64, seed=1, stream=True,
    stream_options={"include_usage": True}, extra_body={"cache": "prefix", "threshold": 0.8})
parts, finish, role, usage = [], None, None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
        assert chunk.choices == [], chunk
        continue
    d = chunk.choices[0].delta
    role = role or d.role
    if d.content:
        parts.append(d.content)
    finish = chunk.choices[0].finish_reason or finish
assert "".join(parts) == text, (parts, text)
assert finish in ("stop", "length")
assert role == "assistant"
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

# an empty answer still opens with the role (the stream helper reads it)
with client.chat.completions.stream(
        model=model, messages=question, max_tokens=64, seed=1, stop=[text[:1]],
        extra_body={"cache": "prefix", "threshold": 0.8}) as s:
    final = s.get_final_completion()
assert final.choices[0].message.role == "assistant", final
assert final.choices[0].message.content in ("", None), final

# n samples: choice i samples with seed + i, so n=1 at that seed reproduces it
sampled = dict(model=model, prompt="Hello world", max_tokens=40, temperature=1.0,
               extra_body={"gen_length": 64})
many = client.completions.create(n=3, seed=7, **sampled)
assert [c.index for c in many.choices] == [0, 1, 2], many
for i, c in enumerate(many.choices):
    one = client.completions.create(n=1, seed=7 + i, **sampled)
    assert one.choices[0].text == c.text, (i, one, c)
assert len({c.text for c in many.choices}) > 1, many
assert many.usage.prompt_tokens == 11
assert many.usage.completion_tokens == sum(
    client.completions.create(n=1, seed=7 + i, **sampled).usage.completion_tokens for i in range(3))
texts = {}
for chunk in client.completions.create(n=2, seed=7, stream=True, **sampled):
    for c in chunk.choices:
        texts[c.index] = texts.get(c.index, "") + c.text
assert texts == {0: many.choices[0].text, 1: many.choices[1].text}, texts

# reveal-time logprobs: one entry per answer token, the alternatives asked for
lp = client.chat.completions.create(
    model=model, messages=question, max_tokens=64, logprobs=True, top_logprobs=2,
    extra_body={"cache": "prefix", "threshold": 0.8})
entries = lp.choices[0].logprobs.content
assert len(entries) == lp.usage.completion_tokens, lp
assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries), entries
c = client.completions.create(model=model, prompt="Hello world", max_tokens=40, logprobs=3)
assert len(c.choices[0].logprobs.token_logprobs) == c.usage.completion_tokens, c
assert all(len(t) <= 3 for t in c.choices[0].logprobs.top_logprobs), c
# streamed: each chunk's entries are those of the tokens its text completes; together the answer's
chunks = client.chat.completions.create(
    model=model, messages=question, max_tokens=64, logprobs=True, top_logprobs=2, stream=True,
    extra_body={"cache": "prefix", "threshold": 0.8})
streamed = [e for ch in chunks for c in ch.choices if c.logprobs for e in (c.logprobs.content or [])]
assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries], streamed

# infilling: the answer is the middle
fill = client.completions.create(model=model, prompt="Hello world", suffix=" and goodbye.",
                                 max_tokens=64, extra_body={"gen_length": 64})
assert isinstance(fill.choices[0].text, str), fill

try:
    client.completions.create(model=model, prompt="x", n=65)
    raise SystemExit("n=65 was accepted")
except openai.BadRequestError as e:
    assert "`n`" in str(e), e

bad = openai.OpenAI(base_url=base, api_key="wrong")
try:
    bad.models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("openai client: ok")
