// The official OpenAI Node SDK against wq's inference_service (started by
// tests/openai_sdk_test.sh, which passes its base URL): completions, chat,
// streaming, n > 1, logprobs, models and errors, as an OpenAI client sees them.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.WQ_OPENAI_BASE_URL,
  apiKey: "dummy",
  maxRetries: 0, // a 429 or 503 must reach the test, not be retried away
});
const MODEL = "stories260K";
const CHAT_MODEL = "openai-chat"; // stories260K with a template that joins the contents
const PROMPT = "Once upon a time";

async function greedyCompletion(maxTokens) {
  return client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: maxTokens, temperature: 0 });
}

test("models.list lists the loaded models", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.deepEqual(ids.sort(), [CHAT_MODEL, MODEL].sort());
});

test("completions.create", async () => {
  const completion = await greedyCompletion(16);
  assert.match(completion.id, /^cmpl-/);
  assert.equal(completion.object, "text_completion");
  assert.equal(completion.choices.length, 1);
  assert.equal(completion.choices[0].finish_reason, "length");
  assert.ok(completion.choices[0].text.length > 0);
  assert.equal(completion.usage.completion_tokens, 16);
  assert.equal(completion.usage.total_tokens,
               completion.usage.prompt_tokens + completion.usage.completion_tokens);
  // stop, as a string.
  const words = completion.choices[0].text.trim().split(" ");
  const stopped = await client.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 16, temperature: 0, stop: " " + words[2] });
  assert.equal(stopped.choices[0].finish_reason, "stop");
  assert.ok(completion.choices[0].text.startsWith(stopped.choices[0].text));
  assert.ok(stopped.choices[0].text.length < completion.choices[0].text.length);
});

test("chat.completions.create renders the chat template", async () => {
  const chat = await client.chat.completions.create({
    model: CHAT_MODEL, messages: [{ role: "user", content: PROMPT }], max_tokens: 16, temperature: 0 });
  assert.match(chat.id, /^chatcmpl-/);
  assert.equal(chat.choices[0].message.role, "assistant");
  assert.equal(chat.choices[0].message.content, (await greedyCompletion(16)).choices[0].text);
});

test("streaming adds up to the completion, usage last", async () => {
  const whole = await greedyCompletion(20);
  const stream = await client.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 20, temperature: 0, stream: true,
    stream_options: { include_usage: true } });
  let text = "";
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, "length");
  assert.deepEqual(usage, whole.usage);

  const chatStream = await client.chat.completions.create({
    model: CHAT_MODEL, messages: [{ role: "user", content: PROMPT }], max_tokens: 20,
    temperature: 0, stream: true });
  let content = "";
  for await (const chunk of chatStream) content += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(content, whole.choices[0].text);
});

test("n > 1 gives independent samples, reproducible by seed", async () => {
  const request = { model: CHAT_MODEL, messages: [{ role: "user", content: PROMPT }],
                    max_tokens: 24, temperature: 1, seed: 7, n: 3 };
  const first = await client.chat.completions.create(request);
  assert.deepEqual(first.choices.map((c) => c.index), [0, 1, 2]);
  const texts = new Set(first.choices.map((c) => c.message.content));
  assert.ok(texts.size >= 2, [...texts].join(" | "));
  const again = await client.chat.completions.create(request);
  assert.deepEqual(again.choices.map((c) => c.message.content),
                   first.choices.map((c) => c.message.content));
});

test("logprobs", async () => {
  const chat = await client.chat.completions.create({
    model: CHAT_MODEL, messages: [{ role: "user", content: PROMPT }], max_tokens: 8,
    temperature: 0, logprobs: true, top_logprobs: 5 });
  const content = chat.choices[0].logprobs.content;
  assert.equal(content.length, 8);
  for (const token of content) {
    assert.ok(token.logprob <= 0);
    assert.equal(token.top_logprobs.length, 5);
    // Greedy: the chosen token is the most likely one.
    assert.ok(Math.abs(token.top_logprobs[0].logprob - token.logprob) < 1e-6);
  }
  assert.equal(content.map((t) => t.token).join(""), chat.choices[0].message.content);

  const completion = await client.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 8, temperature: 0, logprobs: 3 });
  assert.equal(completion.choices[0].logprobs.tokens.length, 8);
  assert.equal(completion.choices[0].logprobs.top_logprobs[0] !== null, true);
});

test("errors are APIErrors with OpenAI's status, param and code", async () => {
  await assert.rejects(
    client.completions.create({ model: "no-such-model", prompt: PROMPT }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found");
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: PROMPT, temperature: -1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature");
  await assert.rejects(
    client.chat.completions.create({
      model: CHAT_MODEL, messages: [{ role: "user", content: PROMPT }],
      tools: [{ type: "function", function: { name: "f", parameters: {} } }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "tools");
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 100000 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "max_tokens");
});
