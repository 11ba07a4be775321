"""wq_client against the real servers that clients/testing/with_servers.sh starts."""

import os
import sys
import time
import unittest

import grpc

import wq_client
from wq.v1 import inference_pb2, quantizer_pb2

ONCE = "Once upon a time"
# stories260K's fp32 greedy continuation, as tests/e2e_inference_test.cc expects.
GOLDEN = ", there was a little girl named Lily"
CHAT_MODEL = "stories260K-chat"  # its template: <|role|>content...<|assistant|>

_artifact_id = None


def quantized_artifact(quantizer):
    """The stories260K int4_clip/sym/g32/RTN artifact, quantized on first use."""
    global _artifact_id
    if _artifact_id is None:
        _artifact_id = quantizer.quantize("stories260K", weight_dtype="INT4_CLIP",
                                          scheme="SYM", group_size=32, algorithm="RTN",
                                          timeout=120).artifact_id
    return _artifact_id


class ClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.quantizer = wq_client.QuantizerClient(wq_client.connect(os.environ["WQ_QUANTIZER"]))
        cls.inference = wq_client.InferenceClient(wq_client.connect(os.environ["WQ_INFERENCE"]))

    def assert_code(self, code, call, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as raised:
            call(*args, **kwargs)
        self.assertEqual(raised.exception.code(), code, raised.exception.details())
        return raised.exception.details()

    def loaded_artifact(self):
        artifact = quantized_artifact(self.quantizer)
        info = self.inference.load_model(artifact)  # idempotent
        self.assertTrue(info.quantized)
        self.assertEqual(info.source_model_id, "stories260K")
        return artifact

    def test_generated_package_is_wq_v1(self):
        self.assertEqual(inference_pb2.DESCRIPTOR.package, "wq.v1")
        self.assertEqual(inference_pb2.DESCRIPTOR.name, "wq/v1/inference.proto")
        self.assertNotIn("proto", sys.modules)  # nothing named like proto-plus's package

    def test_quantize_watches_progress_to_succeeded(self):
        snapshots = []
        # Group size 128, which no other test asks for: this job really runs.
        job = self.quantizer.quantize("stories260K", on_progress=snapshots.append,
                                      weight_dtype="INT4_CLIP", group_size=128, timeout=120)
        self.assertEqual(job.state, quantizer_pb2.JOB_STATE_SUCCEEDED)
        self.assertTrue(job.artifact_id)
        # A job this small may be done before the watch starts: then its one
        # snapshot is the terminal one.
        self.assertGreaterEqual(len(snapshots), 1)
        self.assertEqual(snapshots[-1], job)
        percents = [s.progress.percent for s in snapshots]
        self.assertEqual(percents, sorted(percents))
        self.assertEqual(job.progress.percent, 100)
        self.assertEqual(job.progress.phase, quantizer_pb2.PHASE_DONE)
        # Snapshots coalesce on a fast job; every phase change is in the log.
        self.assertTrue(any(line.startswith("PHASE_QUANTIZING") for line in job.log), job.log)
        self.assertEqual(self.quantizer.get_job(job.job_id).state, quantizer_pb2.JOB_STATE_SUCCEEDED)
        self.assertIn(job.job_id, [j.job_id for j in self.quantizer.list_jobs()])
        artifact = self.quantizer.get_artifact(job.artifact_id)
        self.assertEqual(artifact.source_model_id, "stories260K")
        self.assertEqual(artifact.config.group_size, 128)
        self.assertGreater(artifact.bits_per_weight, 4)
        self.assertLess(artifact.bits_per_weight, 5)

    def test_bad_submissions_carry_status_codes(self):
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.quantizer.submit, "no-such-model")
        details = self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.quantizer.submit,
                                   "stories260K", group_size=0)
        self.assertIn("group_size", details)

    def test_fp32_generate_gives_golden_continuation(self):
        info = self.inference.load_model("stories260K")
        self.assertFalse(info.quantized)
        result = self.inference.generate("stories260K", ONCE, max_new_tokens=24)
        self.assertTrue(result.text.startswith(GOLDEN), result.text)
        self.assertEqual(result.usage.completion_tokens, 24)
        self.assertEqual(result.finish_reason, inference_pb2.LENGTH)
        loaded = [m.model for m in self.inference.list_models().loaded]
        self.assertIn("stories260K", loaded)

    def test_quantized_generate_is_deterministic_and_batches(self):
        artifact = self.loaded_artifact()
        first = self.inference.generate(artifact, ONCE, max_new_tokens=24)
        again = self.inference.generate(artifact, ONCE, max_new_tokens=24)
        self.assertTrue(first.text)
        self.assertEqual(first.text, again.text)
        self.assertEqual(list(first.token_ids), list(again.token_ids))
        self.assertEqual(len(first.token_ids), first.usage.completion_tokens)
        batch = self.inference.generate(artifact, [ONCE, "The cat"], max_new_tokens=24)
        self.assertEqual(len(batch), 2)
        self.assertEqual(batch[0].text, first.text)

    def test_stream_concatenates_to_unary_text(self):
        artifact = self.loaded_artifact()
        unary = self.inference.generate(artifact, ONCE, max_new_tokens=24)
        stream = self.inference.stream(artifact, ONCE, max_new_tokens=24)
        tokens = list(stream)
        self.assertEqual(len(tokens), 24)
        self.assertEqual("".join(t.text for t in tokens), unary.text)
        self.assertEqual([t.id for t in tokens], list(unary.token_ids))
        self.assertTrue(all(t.logprob <= 0 for t in tokens))
        self.assertEqual(stream.end.text, unary.text)
        self.assertEqual(stream.end.finish_reason, inference_pb2.LENGTH)
        self.assertEqual(stream.end.usage.completion_tokens, 24)

    def test_chat_is_generate_on_the_rendered_conversation(self):
        self.inference.load_model(CHAT_MODEL)
        messages = [("system", "Be brief."), {"role": "user", "content": "The cat"}]
        reply = self.inference.chat(CHAT_MODEL, messages, max_new_tokens=12)
        rendered = self.inference.generate(CHAT_MODEL, "<|system|>Be brief.<|user|>The cat<|assistant|>",
                                           max_new_tokens=12)
        self.assertTrue(reply.text)
        self.assertEqual(reply.text, rendered.text)
        self.assertEqual(reply.usage.prompt_tokens, rendered.usage.prompt_tokens)
        streamed = self.inference.chat_stream(CHAT_MODEL, messages, max_new_tokens=12)
        self.assertEqual(streamed.text(), reply.text)
        self.assertEqual(streamed.end.text, reply.text)
        # stories260K itself has no template.
        self.inference.load_model("stories260K")
        self.assert_code(grpc.StatusCode.FAILED_PRECONDITION, self.inference.chat, "stories260K",
                         [("user", "hi")])

    def test_tokenize_detokenize_round_trip(self):
        self.inference.load_model("stories260K")
        ids = self.inference.tokenize("stories260K", ONCE)
        plain = self.inference.tokenize("stories260K", ONCE, add_special_tokens=False)
        self.assertEqual(ids[1:], plain)
        self.assertEqual(self.inference.detokenize("stories260K", ids), ONCE)

    def cancel_after_three_tokens(self, client, leave):
        """Streams up to 256 tokens, reads three, then `leave(stream, tokens)`
        must cancel; returns the stream. stories260K writes its 256 tokens in
        some 25 ms, so the server may finish before the cancel reaches it:
        such a try shows nothing, and is made again."""
        for _ in range(5):
            stream = client.stream("stories260K", ONCE, max_new_tokens=256)
            tokens = iter(stream)
            for _ in range(3):
                next(tokens)
            leave(stream, tokens)
            if stream.code() == grpc.StatusCode.CANCELLED:
                break
        self.assertEqual(stream.code(), grpc.StatusCode.CANCELLED)
        self.assertIsNone(stream.end)
        return stream

    def test_closing_a_stream_cancels_it(self):
        self.inference.load_model("stories260K")

        def leave_with_block(stream, tokens):
            with stream:
                pass

        def leave_loop(stream, tokens):
            for _ in stream:  # one more token, then out of the loop
                break

        for leave in (leave_with_block, leave_loop):
            self.cancel_after_three_tokens(self.inference, leave)
        stream = self.cancel_after_three_tokens(self.inference, lambda stream, _: stream.close())
        with self.assertRaises(grpc.RpcError) as raised:
            list(stream)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.CANCELLED)

    def test_cancelled_stream_frees_the_only_slot(self):
        one_slot = wq_client.InferenceClient(
            wq_client.connect(os.environ["WQ_INFERENCE_ONE_SLOT"]))
        one_slot.load_model("stories260K")
        self.cancel_after_three_tokens(one_slot, lambda stream, _: stream.close())
        # The server notices within its 50 ms cancel poll; until then the only
        # slot may still be taken (RESOURCE_EXHAUSTED, no waiting line).
        deadline = time.monotonic() + 5
        while True:
            try:
                result = one_slot.generate("stories260K", ONCE, max_new_tokens=24)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.assertTrue(result.text.startswith(GOLDEN), result.text)

    def test_errors_carry_status_codes(self):
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.inference.load_model, "no-such-model")
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.inference.generate, "no-such-model", ONCE)
        self.inference.load_model("stories260K")
        details = self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.inference.generate,
                                   "stories260K", ONCE, top_p=1.5)
        self.assertIn("top_p", details)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.inference.generate, "stories260K",
                         ONCE, temperature=-1)
        details = self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.inference.generate,
                                   "stories260K", ONCE, max_new_tokens=100000)
        self.assertIn("256", details)  # the server's --max_new_tokens_cap
        # A stream's error comes with its first read.
        stream = self.inference.stream("stories260K", ONCE, top_p=1.5)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, list, stream)
        with self.assertRaises(ValueError):  # not a SamplingParams field: refused locally
            self.inference.generate("stories260K", ONCE, max_tokens=8)

    def test_token_metadata_is_accepted(self):
        # The server does not check tokens yet; the call must still go through
        # the interceptor unharmed, unary and streaming.
        client = wq_client.InferenceClient(
            wq_client.connect(os.environ["WQ_INFERENCE"], token="secret"))
        self.assertGreater(client.load_model("stories260K").vocab_size, 0)
        self.assertTrue(client.stream("stories260K", ONCE, max_new_tokens=4).text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
