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

try:
    client.completions.create(model=model, prompt="x", n=2)
    raise SystemExit("n=2 was accepted")
except openai.BadRequestError as e:
    assert "`n`" in str(e), e

bad = openai.OpenAI(base_url=base, api_key="wrong")
try:
    bad.models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print("openai client: ok")
