"""Thin helpers over wq's generated gRPC stubs (package wq.v1).

    import wq_client
    channel = wq_client.connect("127.0.0.1:50052")
    inference = wq_client.InferenceClient(channel)
    inference.load_model("stories260K")
    print(inference.generate("stories260K", "Once upon a time", max_new_tokens=24).text)

Errors are the calls' own grpc.RpcError (e.code() is a grpc.StatusCode).
Sampling fields are keyword arguments named as in wq.v1.SamplingParams.
"""

import collections

import grpc

from wq.v1 import inference_pb2, inference_pb2_grpc, quant_config_pb2
from wq.v1 import quantizer_pb2, quantizer_pb2_grpc

__all__ = [
    "connect",
    "InferenceClient",
    "QuantizerClient",
    "TokenStream",
    "JobError",
    "inference_pb2",
    "quant_config_pb2",
    "quantizer_pb2",
]

DEFAULT_TIMEOUT_S = 60.0


class _CallDetails(
        collections.namedtuple(
            "_CallDetails",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call.

    An interceptor rather than call credentials, which gRPC allows on TLS
    channels only: a token on a loopback or in-cluster plaintext channel
    works the same way.
    """

    def __init__(self, token):
        self._header = ("authorization", "Bearer " + token)

    def _details(self, details):
        return _CallDetails(details.method, details.timeout,
                            list(details.metadata or []) + [self._header], details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def connect(address, *, tls=False, root_certificates=None, token=None):
    """A channel to `address` ("host:port").

    tls: encrypt with the system's roots, or with `root_certificates` (PEM
    bytes; giving them implies tls). token: sent as a bearer token with every
    call (use TLS beyond loopback).
    """
    if tls or root_certificates is not None:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))
    else:
        channel = grpc.insecure_channel(address)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def _sampling(params):
    # Unknown names and wrong types raise here (ValueError / TypeError).
    return inference_pb2.SamplingParams(**params)


def _messages(messages):
    """ChatMessages from ChatMessage, {"role", "content"} dicts or (role, content) pairs."""
    out = []
    for m in messages:
        if isinstance(m, inference_pb2.ChatMessage):
            out.append(m)
        elif isinstance(m, dict):
            out.append(inference_pb2.ChatMessage(role=m["role"], content=m["content"]))
        else:
            role, content = m
            out.append(inference_pb2.ChatMessage(role=role, content=content))
    return out


class TokenStream:
    """The tokens of one streamed generation (GenerateStream or ChatStream).

    Iterating yields wq.v1.Token messages; once it is done, `end` holds the
    StreamEnd (finish reason, usage, timings, whole text). Leaving a `for`
    loop over it early, close(), or leaving a `with` block cancels the call:
    the server stops generating and frees the request's slot; iterating
    afterwards raises grpc.RpcError CANCELLED.
    """

    def __init__(self, call):
        self._call = call
        self.end = None

    def __iter__(self):
        complete = False
        try:
            for event in self._call:
                if event.HasField("token"):
                    yield event.token
                elif event.HasField("end"):
                    self.end = event.end
            complete = True
        finally:
            if not complete:  # the loop was left early: stop the generation
                self.close()

    def text(self):
        """Consumes the stream; the tokens' text joined."""
        return "".join(token.text for token in self)

    def close(self):
        self._call.cancel()

    def code(self):
        """The call's final grpc.StatusCode once iterated to the end or closed
        (CANCELLED, unless the generation had already ended). Before that it
        waits, and gRPC delivers the status only after the last token is read."""
        return self._call.code()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class InferenceClient:
    """wq.v1.InferenceService: models, generation, chat, tokenization."""

    def __init__(self, channel, timeout=DEFAULT_TIMEOUT_S):
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self.timeout = timeout

    def load_model(self, model):
        """Loads an artifact id or a model id (fp32); the ModelInfo. Idempotent."""
        return self.stub.LoadModel(inference_pb2.LoadModelRequest(model=model),
                                   timeout=self.timeout)

    def unload_model(self, model):
        self.stub.UnloadModel(inference_pb2.UnloadModelRequest(model=model), timeout=self.timeout)

    def list_models(self):
        return self.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=self.timeout)

    def server_info(self):
        return self.stub.GetServerInfo(inference_pb2.GetServerInfoRequest(), timeout=self.timeout)

    def generate(self, model, prompts, **sampling):
        """One GenerationResult for a str prompt; a list of them, in order, for a list."""
        single = isinstance(prompts, str)
        request = inference_pb2.GenerateRequest(model=model,
                                                prompts=[prompts] if single else prompts,
                                                sampling=_sampling(sampling))
        results = list(self.stub.Generate(request, timeout=self.timeout).results)
        return results[0] if single else results

    def stream(self, model, prompt, **sampling):
        """A TokenStream of `prompt`'s continuation."""
        request = inference_pb2.GenerateStreamRequest(model=model, prompt=prompt,
                                                      sampling=_sampling(sampling))
        return TokenStream(self.stub.GenerateStream(request, timeout=self.timeout))

    def chat(self, model, messages, add_generation_prompt=None, **sampling):
        """The assistant's reply (a GenerationResult) to one conversation."""
        request = inference_pb2.ChatRequest(
            model=model,
            conversations=[inference_pb2.Conversation(messages=_messages(messages))],
            add_generation_prompt=add_generation_prompt,
            sampling=_sampling(sampling))
        return self.stub.Chat(request, timeout=self.timeout).results[0]

    def chat_stream(self, model, messages, add_generation_prompt=None, **sampling):
        """A TokenStream of the assistant's reply to one conversation."""
        request = inference_pb2.ChatStreamRequest(model=model,
                                                  messages=_messages(messages),
                                                  add_generation_prompt=add_generation_prompt,
                                                  sampling=_sampling(sampling))
        return TokenStream(self.stub.ChatStream(request, timeout=self.timeout))

    def tokenize(self, model, text, add_special_tokens=None):
        request = inference_pb2.TokenizeRequest(model=model, text=text,
                                                add_special_tokens=add_special_tokens)
        return list(self.stub.Tokenize(request, timeout=self.timeout).ids)

    def detokenize(self, model, ids, skip_special_tokens=None):
        request = inference_pb2.DetokenizeRequest(model=model, ids=ids,
                                                  skip_special_tokens=skip_special_tokens)
        return self.stub.Detokenize(request, timeout=self.timeout).text


class JobError(Exception):
    """A quantization job that did not succeed; `job` is its last snapshot."""

    def __init__(self, job):
        super().__init__("job %s %s: %s" % (job.job_id, quantizer_pb2.JobState.Name(job.state),
                                            job.error_message))
        self.job = job


class QuantizerClient:
    """wq.v1.QuantizerService: quantization jobs and their artifacts."""

    def __init__(self, channel, timeout=DEFAULT_TIMEOUT_S):
        self.stub = quantizer_pb2_grpc.QuantizerServiceStub(channel)
        self.timeout = timeout

    def submit(self, model_id, config=None, **config_fields):
        """Submits a job; the Job (QUEUED). `config` is a WeightOnlyQuantConfig,
        or its fields are keyword arguments (enums by name: weight_dtype="INT4_CLIP")."""
        if config is None:
            config = quant_config_pb2.WeightOnlyQuantConfig(**config_fields)
        elif config_fields:
            raise TypeError("give config or its fields, not both")
        request = quantizer_pb2.SubmitJobRequest(model_id=model_id, config=config)
        return self.stub.SubmitJob(request, timeout=self.timeout)

    def watch(self, job_id, timeout=None):
        """Yields the job's snapshots as it changes, the last one terminal.
        timeout: seconds for the whole watch (default: none)."""
        return self.stub.WatchJob(quantizer_pb2.WatchJobRequest(job_id=job_id), timeout=timeout)

    def quantize(self, model_id, config=None, on_progress=None, timeout=None, **config_fields):
        """Submits a job and watches it to its end; the final Job when it
        SUCCEEDED (its artifact_id is loadable), JobError otherwise.
        on_progress(job) is called with every snapshot."""
        job = self.submit(model_id, config, **config_fields)
        for job in self.watch(job.job_id, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        if job.state != quantizer_pb2.JOB_STATE_SUCCEEDED:
            raise JobError(job)
        return job

    def get_job(self, job_id):
        return self.stub.GetJob(quantizer_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout)

    def cancel_job(self, job_id):
        return self.stub.CancelJob(quantizer_pb2.CancelJobRequest(job_id=job_id),
                                   timeout=self.timeout)

    def list_jobs(self):
        """Every job the server keeps, oldest first (all pages)."""
        jobs, token = [], ""
        while True:
            page = self.stub.ListJobs(quantizer_pb2.ListJobsRequest(page_token=token),
                                      timeout=self.timeout)
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def list_artifacts(self):
        return list(
            self.stub.ListArtifacts(quantizer_pb2.ListArtifactsRequest(),
                                    timeout=self.timeout).artifacts)

    def get_artifact(self, artifact_id):
        return self.stub.GetArtifact(quantizer_pb2.GetArtifactRequest(artifact_id=artifact_id),
                                     timeout=self.timeout)
