'use strict';
// Thin helpers over wq's gRPC services, loading proto/wq/v1/*.proto at run
// time with @grpc/proto-loader (no generated code).
//
//   const wq = require('./wq_client');
//   const inference = new wq.InferenceClient(wq.connect('127.0.0.1:50052'));
//   await inference.loadModel('stories260K');
//   const { text } = await inference.generate('stories260K', 'Once upon a time', { max_new_tokens: 24 });
//
// Messages are plain objects with the protos' field names (snake_case), enums
// as their names ('JOB_STATE_SUCCEEDED'), 64-bit integers as strings. A failed
// call rejects with grpc-js's ServiceError: error.code is a grpc.status value.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The repository's proto/ (this file lives in clients/node/).
const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
const DEFAULT_TIMEOUT_MS = 60_000;

function loadServices() {
  const definition = protoLoader.loadSync(['wq/v1/quantizer.proto', 'wq/v1/inference.proto'], {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).wq.v1;
}

let services = null;
function wqV1() {
  services ??= loadServices();
  return services;
}

// Adds `authorization: Bearer <token>` to every call. An interceptor rather
// than call credentials, which grpc-js allows on TLS channels only.
function bearerToken(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

// Where and how to reach a server, for InferenceClient and QuantizerClient.
// tls: encrypt with the system's roots, or with rootCerts (a PEM Buffer;
// giving it implies tls). token: a bearer token sent with every call (use
// TLS beyond loopback).
function connect(address, { tls = false, rootCerts = null, token = null } = {}) {
  const credentials =
    tls || rootCerts ? grpc.credentials.createSsl(rootCerts) : grpc.credentials.createInsecure();
  return { address, credentials, options: token ? { interceptors: [bearerToken(token)] } : {} };
}

function deadline(timeoutMs) {
  return timeoutMs == null ? Infinity : Date.now() + timeoutMs;
}

// Stops a server stream; its closing CANCELLED status is expected, not an
// unhandled 'error' event.
function cancelCall(call) {
  call.on('error', () => {});
  call.cancel();
}

// Yields a server stream's messages; leaving the loop early cancels the call.
async function* messagesOf(call) {
  let complete = false;
  try {
    for await (const message of call) yield message;
    complete = true;
  } finally {
    if (!complete) cancelCall(call);
  }
}

class BaseClient {
  constructor(connection, serviceName, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const Service = wqV1()[serviceName];
    this.stub = new Service(connection.address, connection.credentials, connection.options);
    this.timeoutMs = timeoutMs;
  }

  unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, { deadline: deadline(this.timeoutMs) }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }

  close() {
    this.stub.close();
  }
}

// The tokens of one streamed generation (generateStream or chatStream).
// `for await (const token of stream)` yields Token messages; once done,
// stream.end holds the StreamEnd (finish reason, usage, timings, whole text).
// Breaking out of the loop, or cancel(), cancels the call: the server stops
// generating and frees the request's slot. stream.status resolves to the
// call's final status ({ code, details }; code wq.status.CANCELLED once
// cancelled, unless the generation had already ended).
class TokenStream {
  constructor(call) {
    this.call = call;
    this.end = null;
    this.error = null;
    call.on('error', (error) => {
      this.error = error;
    });
    this.status = new Promise((resolve) => call.on('status', resolve));
  }

  async *[Symbol.asyncIterator]() {
    for await (const event of messagesOf(this.call)) {
      if (event.event === 'token') yield event.token;
      else if (event.event === 'end') this.end = event.end;
    }
    // The call does not replay an error it emitted before this loop began
    // (after cancel(), or an earlier loop): report it here.
    if (this.error) throw this.error;
  }

  // Consumes the stream; the tokens' text joined.
  async text() {
    let text = '';
    for await (const token of this) text += token.text;
    return text;
  }

  cancel() {
    cancelCall(this.call);
  }
}

// ChatMessages from {role, content} objects or [role, content] pairs.
function chatMessages(messages) {
  return messages.map((m) => (Array.isArray(m) ? { role: m[0], content: m[1] } : m));
}

class InferenceClient extends BaseClient {
  constructor(connection, options) {
    super(connection, 'InferenceService', options);
  }

  // Loads an artifact id or a model id (fp32); the ModelInfo. Idempotent.
  loadModel(model) {
    return this.unary('LoadModel', { model });
  }

  async unloadModel(model) {
    await this.unary('UnloadModel', { model });
  }

  listModels() {
    return this.unary('ListModels', {});
  }

  serverInfo() {
    return this.unary('GetServerInfo', {});
  }

  // One GenerationResult for a string prompt; an array of them, in order, for an array.
  async generate(model, prompts, sampling = {}) {
    const single = typeof prompts === 'string';
    const { results } = await this.unary('Generate', {
      model,
      prompts: single ? [prompts] : prompts,
      sampling,
    });
    return single ? results[0] : results;
  }

  stream(model, prompt, sampling = {}) {
    const call = this.stub.GenerateStream(
      { model, prompt, sampling },
      { deadline: deadline(this.timeoutMs) },
    );
    return new TokenStream(call);
  }

  // The assistant's reply (a GenerationResult) to one conversation.
  async chat(model, messages, sampling = {}, { addGenerationPrompt } = {}) {
    const { results } = await this.unary('Chat', {
      model,
      conversations: [{ messages: chatMessages(messages) }],
      add_generation_prompt: addGenerationPrompt,
      sampling,
    });
    return results[0];
  }

  chatStream(model, messages, sampling = {}, { addGenerationPrompt } = {}) {
    const call = this.stub.ChatStream(
      { model, messages: chatMessages(messages), add_generation_prompt: addGenerationPrompt, sampling },
      { deadline: deadline(this.timeoutMs) },
    );
    return new TokenStream(call);
  }

  async tokenize(model, text, { addSpecialTokens } = {}) {
    const { ids } = await this.unary('Tokenize', {
      model,
      text,
      add_special_tokens: addSpecialTokens,
    });
    return ids;
  }

  async detokenize(model, ids, { skipSpecialTokens } = {}) {
    const { text } = await this.unary('Detokenize', {
      model,
      ids,
      skip_special_tokens: skipSpecialTokens,
    });
    return text;
  }
}

// A quantization job that did not succeed; error.job is its last snapshot.
class JobError extends Error {
  constructor(job) {
    super(`job ${job.job_id} ${job.state}: ${job.error_message}`);
    this.name = 'JobError';
    this.job = job;
  }
}

class QuantizerClient extends BaseClient {
  constructor(connection, options) {
    super(connection, 'QuantizerService', options);
  }

  // Submits a job; the Job (JOB_STATE_QUEUED). config: WeightOnlyQuantConfig
  // fields, enums by name ({ weight_dtype: 'INT4_CLIP', group_size: 32 }).
  submit(modelId, config = {}) {
    return this.unary('SubmitJob', { model_id: modelId, config });
  }

  // Yields the job's snapshots as it changes, the last one terminal; leaving
  // the loop early stops watching (the job goes on). timeoutMs: for the whole
  // watch (default: none).
  watch(jobId, { timeoutMs = null } = {}) {
    return messagesOf(this.stub.WatchJob({ job_id: jobId }, { deadline: deadline(timeoutMs) }));
  }

  // Submits a job and watches it to its end; the final Job when it
  // succeeded (its artifact_id is loadable), a JobError otherwise.
  // onProgress(job) is called with every snapshot.
  async quantize(modelId, config = {}, { onProgress = null, timeoutMs = null } = {}) {
    let job = await this.submit(modelId, config);
    for await (job of this.watch(job.job_id, { timeoutMs })) onProgress?.(job);
    if (job.state !== 'JOB_STATE_SUCCEEDED') throw new JobError(job);
    return job;
  }

  getJob(jobId) {
    return this.unary('GetJob', { job_id: jobId });
  }

  cancelJob(jobId) {
    return this.unary('CancelJob', { job_id: jobId });
  }

  // Every job the server keeps, oldest first (all pages).
  async listJobs() {
    const jobs = [];
    let page_token = '';
    do {
      const page = await this.unary('ListJobs', { page_token });
      jobs.push(...page.jobs);
      page_token = page.next_page_token;
    } while (page_token);
    return jobs;
  }

  async listArtifacts() {
    return (await this.unary('ListArtifacts', {})).artifacts;
  }

  getArtifact(artifactId) {
    return this.unary('GetArtifact', { artifact_id: artifactId });
  }
}

module.exports = {
  connect,
  InferenceClient,
  QuantizerClient,
  TokenStream,
  JobError,
  status: grpc.status,
};
