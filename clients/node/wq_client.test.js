'use strict';
// wq_client against the real servers that clients/testing/with_servers.sh starts.
const assert = require('node:assert/strict');
const { after, before, describe, test } = require('node:test');
const wq = require('./wq_client');

const ONCE = 'Once upon a time';
// stories260K's fp32 greedy continuation, as tests/e2e_inference_test.cc expects.
const GOLDEN = ', there was a little girl named Lily';
const CHAT_MODEL = 'stories260K-chat'; // its template: <|role|>content...<|assistant|>

// Resolves if `promise` rejects with grpc status `code`; the error's details.
async function rejectsWith(promise, code) {
  try {
    await promise;
  } catch (error) {
    assert.equal(error.code, code, `${error.code}: ${error.details}`);
    return error.details;
  }
  assert.fail(`expected status ${code}`);
}

async function collect(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

describe('wq_client', () => {
  let quantizer;
  let inference;
  const opened = [];
  let artifact = null;

  function open(Client, address, options) {
    const client = new Client(wq.connect(address, options));
    opened.push(client);
    return client;
  }

  // The stories260K int4_clip/sym/g32/RTN artifact, quantized on first use.
  async function loadedArtifact() {
    artifact ??= (
      await quantizer.quantize(
        'stories260K',
        { weight_dtype: 'INT4_CLIP', scheme: 'SYM', group_size: 32, algorithm: 'RTN' },
        { timeoutMs: 120_000 },
      )
    ).artifact_id;
    const info = await inference.loadModel(artifact); // idempotent
    assert.equal(info.quantized, true);
    assert.equal(info.source_model_id, 'stories260K');
    return artifact;
  }

  before(() => {
    quantizer = open(wq.QuantizerClient, process.env.WQ_QUANTIZER);
    inference = open(wq.InferenceClient, process.env.WQ_INFERENCE);
  });

  after(() => {
    for (const client of opened) client.close();
  });

  test('quantize watches progress to SUCCEEDED', async () => {
    const snapshots = [];
    // Group size 128, which no other test asks for: this job really runs.
    const job = await quantizer.quantize(
      'stories260K',
      { weight_dtype: 'INT4_CLIP', group_size: 128 },
      { onProgress: (s) => snapshots.push(s), timeoutMs: 120_000 },
    );
    assert.equal(job.state, 'JOB_STATE_SUCCEEDED');
    assert.ok(job.artifact_id);
    // A job this small may be done before the watch starts: then its one
    // snapshot is the terminal one.
    assert.ok(snapshots.length >= 1);
    assert.equal(snapshots.at(-1), job);
    const percents = snapshots.map((s) => s.progress.percent);
    assert.deepEqual(percents, [...percents].sort((a, b) => a - b));
    assert.equal(job.progress.percent, 100);
    assert.equal(job.progress.phase, 'PHASE_DONE');
    // Snapshots coalesce on a fast job; every phase change is in the log.
    assert.ok(job.log.some((line) => line.startsWith('PHASE_QUANTIZING')), job.log.join('\n'));
    assert.equal((await quantizer.getJob(job.job_id)).state, 'JOB_STATE_SUCCEEDED');
    assert.ok((await quantizer.listJobs()).some((j) => j.job_id === job.job_id));
    const stored = await quantizer.getArtifact(job.artifact_id);
    assert.equal(stored.source_model_id, 'stories260K');
    assert.equal(stored.config.group_size, 128);
    assert.ok(stored.bits_per_weight > 4 && stored.bits_per_weight < 5, `${stored.bits_per_weight}`);
  });

  test('bad submissions carry status codes', async () => {
    await rejectsWith(quantizer.submit('no-such-model'), wq.status.NOT_FOUND);
    const details = await rejectsWith(
      quantizer.submit('stories260K', { group_size: 0 }),
      wq.status.INVALID_ARGUMENT,
    );
    assert.match(details, /group_size/);
  });

  test('fp32 generate gives the golden continuation', async () => {
    const info = await inference.loadModel('stories260K');
    assert.equal(info.quantized, false);
    const result = await inference.generate('stories260K', ONCE, { max_new_tokens: 24 });
    assert.ok(result.text.startsWith(GOLDEN), result.text);
    assert.equal(result.usage.completion_tokens, 24);
    assert.equal(result.finish_reason, 'LENGTH');
    const { loaded } = await inference.listModels();
    assert.ok(loaded.some((m) => m.model === 'stories260K'));
  });

  test('quantized generate is deterministic and batches', async () => {
    const model = await loadedArtifact();
    const first = await inference.generate(model, ONCE, { max_new_tokens: 24 });
    const again = await inference.generate(model, ONCE, { max_new_tokens: 24 });
    assert.ok(first.text);
    assert.equal(first.text, again.text);
    assert.deepEqual(first.token_ids, again.token_ids);
    assert.equal(first.token_ids.length, first.usage.completion_tokens);
    const batch = await inference.generate(model, [ONCE, 'The cat'], { max_new_tokens: 24 });
    assert.equal(batch.length, 2);
    assert.equal(batch[0].text, first.text);
  });

  test('stream concatenates to the unary text', async () => {
    const model = await loadedArtifact();
    const unary = await inference.generate(model, ONCE, { max_new_tokens: 24 });
    const stream = inference.stream(model, ONCE, { max_new_tokens: 24 });
    const tokens = await collect(stream);
    assert.equal(tokens.length, 24);
    assert.equal(tokens.map((t) => t.text).join(''), unary.text);
    assert.deepEqual(
      tokens.map((t) => t.id),
      unary.token_ids,
    );
    assert.ok(tokens.every((t) => t.logprob <= 0));
    assert.equal(stream.end.text, unary.text);
    assert.equal(stream.end.finish_reason, 'LENGTH');
    assert.equal(stream.end.usage.completion_tokens, 24);
  });

  test('chat is generate on the rendered conversation', async () => {
    await inference.loadModel(CHAT_MODEL);
    const messages = [
      ['system', 'Be brief.'],
      { role: 'user', content: 'The cat' },
    ];
    const reply = await inference.chat(CHAT_MODEL, messages, { max_new_tokens: 12 });
    const rendered = await inference.generate(
      CHAT_MODEL,
      '<|system|>Be brief.<|user|>The cat<|assistant|>',
      { max_new_tokens: 12 },
    );
    assert.ok(reply.text);
    assert.equal(reply.text, rendered.text);
    assert.equal(reply.usage.prompt_tokens, rendered.usage.prompt_tokens);
    const streamed = inference.chatStream(CHAT_MODEL, messages, { max_new_tokens: 12 });
    assert.equal(await streamed.text(), reply.text);
    assert.equal(streamed.end.text, reply.text);
    // stories260K itself has no template.
    await inference.loadModel('stories260K');
    await rejectsWith(
      inference.chat('stories260K', [['user', 'hi']]),
      wq.status.FAILED_PRECONDITION,
    );
  });

  test('tokenize and detokenize round-trip', async () => {
    await inference.loadModel('stories260K');
    const ids = await inference.tokenize('stories260K', ONCE);
    const plain = await inference.tokenize('stories260K', ONCE, { addSpecialTokens: false });
    assert.deepEqual(ids.slice(1), plain);
    assert.equal(await inference.detokenize('stories260K', ids), ONCE);
  });

  // Streams up to 256 tokens, reads three, then leave(stream, tokens) must
  // cancel; returns the stream. stories260K writes its 256 tokens in some
  // 25 ms, so the server may finish before the cancel reaches it: such a try
  // shows nothing, and is made again.
  async function cancelAfterThreeTokens(client, leave) {
    let stream;
    for (let attempt = 0; attempt < 5; ++attempt) {
      stream = client.stream('stories260K', ONCE, { max_new_tokens: 256 });
      const tokens = stream[Symbol.asyncIterator]();
      for (let i = 0; i < 3; ++i) assert.equal((await tokens.next()).done, false);
      await leave(stream, tokens);
      if ((await stream.status).code === wq.status.CANCELLED) break;
    }
    assert.equal((await stream.status).code, wq.status.CANCELLED);
    assert.equal(stream.end, null);
    return stream;
  }

  test('leaving the loop or cancel() cancels a stream', async () => {
    await inference.loadModel('stories260K');
    await cancelAfterThreeTokens(inference, async (stream) => {
      for await (const token of stream) break; // one more token, then out of the loop
    });
    const stream = await cancelAfterThreeTokens(inference, (stream) => stream.cancel());
    await rejectsWith(collect(stream), wq.status.CANCELLED);
  });

  test('a cancelled stream frees the only slot', async () => {
    const oneSlot = open(wq.InferenceClient, process.env.WQ_INFERENCE_ONE_SLOT);
    await oneSlot.loadModel('stories260K');
    await cancelAfterThreeTokens(oneSlot, async (stream, tokens) => {
      await tokens.return(); // what leaving a for await loop does
    });
    // The server notices within its 50 ms cancel poll; until then the only
    // slot may still be taken (RESOURCE_EXHAUSTED, no waiting line).
    const deadline = Date.now() + 5000;
    let result;
    for (;;) {
      try {
        result = await oneSlot.generate('stories260K', ONCE, { max_new_tokens: 24 });
        break;
      } catch (error) {
        if (error.code !== wq.status.RESOURCE_EXHAUSTED || Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    assert.ok(result.text.startsWith(GOLDEN), result.text);
  });

  test('errors carry status codes', async () => {
    await rejectsWith(inference.loadModel('no-such-model'), wq.status.NOT_FOUND);
    await rejectsWith(inference.generate('no-such-model', ONCE), wq.status.NOT_FOUND);
    await inference.loadModel('stories260K');
    let details = await rejectsWith(
      inference.generate('stories260K', ONCE, { top_p: 1.5 }),
      wq.status.INVALID_ARGUMENT,
    );
    assert.match(details, /top_p/);
    await rejectsWith(
      inference.generate('stories260K', ONCE, { temperature: -1 }),
      wq.status.INVALID_ARGUMENT,
    );
    details = await rejectsWith(
      inference.generate('stories260K', ONCE, { max_new_tokens: 100000 }),
      wq.status.INVALID_ARGUMENT,
    );
    assert.match(details, /256/); // the server's --max_new_tokens_cap
    // A stream's error comes with its first read.
    await rejectsWith(
      collect(inference.stream('stories260K', ONCE, { top_p: 1.5 })),
      wq.status.INVALID_ARGUMENT,
    );
  });

  test('token metadata is accepted', async () => {
    // The server does not check tokens yet; calls must still go through the
    // interceptor unharmed, unary and streaming.
    const client = open(wq.InferenceClient, process.env.WQ_INFERENCE, { token: 'secret' });
    assert.ok((await client.loadModel('stories260K')).vocab_size > 0);
    assert.ok(await client.stream('stories260K', ONCE, { max_new_tokens: 4 }).text());
  });
});
