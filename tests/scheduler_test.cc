// GenerationScheduler on stories260K: its places, shutdown and drain,
// prefill in chunks, stop sequences. A request's on_token can hold the loop
// (callbacks run on its thread), which keeps that request running for as long
// as a test needs.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/model/llama.h"
#include "common/serving/scheduler.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

constexpr char kModelDir[] = "testdata/models/stories260K";
constexpr absl::Duration kPrompt = absl::Seconds(10);  // "at once", generously

// One request's outcome; with a gate, its first token waits for Open().
struct Request {
  absl::Notification started, opened, done;
  GenerationResult result;

  GenerationCallbacks Callbacks(bool gated = false) {
    GenerationCallbacks callbacks;
    if (gated) {
      callbacks.on_token = [this](const TokenEvent&) {
        if (!started.HasBeenNotified()) started.Notify();
        opened.WaitForNotification();
      };
    }
    callbacks.on_done = [this](const GenerationResult& r) {
      result = r;
      done.Notify();
    };
    return callbacks;
  }
  void Open() { opened.Notify(); }
  bool Wait() { return done.WaitForNotificationWithTimeout(kPrompt); }
};

class SchedulerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer = Tokenizer::Load(std::string(kModelDir) + "/tokenizer.model");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = new std::shared_ptr<const Tokenizer>(std::move(*tokenizer));
    auto weights = LoadLlamaModelDir(kModelDir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    model_ = new std::shared_ptr<const LlamaModel>(std::make_shared<LlamaModel>(*weights));
  }

  static std::unique_ptr<GenerationScheduler> Make(int max_running, int max_queued) {
    GenerationScheduler::Options options;
    options.max_running = max_running;
    options.max_queued = max_queued;
    return std::make_unique<GenerationScheduler>(*model_, *tokenizer_, options);
  }

  static GenerationParams Params() {
    GenerationParams params;
    params.sampling.temperature = 0;
    params.max_new_tokens = 8;
    return params;
  }

  static absl::Status Submit(GenerationScheduler& scheduler, Request& request,
                             bool gated = false) {
    auto handle = scheduler.Submit("Once upon a time", Params(), request.Callbacks(gated));
    return handle.status();
  }

  // `request` submitted with its gate, and running: its first token waits
  // for request.Open().
  static void StartGated(GenerationScheduler& scheduler, Request& request) {
    ASSERT_TRUE(Submit(scheduler, request, /*gated=*/true).ok());
    ASSERT_TRUE(request.started.WaitForNotificationWithTimeout(kPrompt));
  }

  // Submits throwaway requests while the places are all taken; the first
  // answer that is not RESOURCE_EXHAUSTED (a shutdown or drain has begun).
  static absl::Status SubmitWhileFull(GenerationScheduler& scheduler) {
    absl::Status status;
    for (int i = 0; i < 10000; ++i) {
      Request late;
      status = Submit(scheduler, late);
      if (!absl::IsResourceExhausted(status)) break;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return status;
  }

  static std::shared_ptr<const Tokenizer>* tokenizer_;
  static std::shared_ptr<const LlamaModel>* model_;
};

std::shared_ptr<const Tokenizer>* SchedulerTest::tokenizer_ = nullptr;
std::shared_ptr<const LlamaModel>* SchedulerTest::model_ = nullptr;

TEST_F(SchedulerTest, CancelledWaitingRequestGivesItsPlaceBackAtOnce) {
  auto scheduler = Make(/*max_running=*/1, /*max_queued=*/1);
  Request running, waiting, refused, next;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, running));
  auto handle = scheduler->Submit("Once upon a time", Params(), waiting.Callbacks());
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_EQ(Submit(*scheduler, refused).code(), absl::StatusCode::kResourceExhausted);

  // The loop is held inside `running`'s step: only Submit can free the place.
  (*handle)->Cancel();
  EXPECT_TRUE(Submit(*scheduler, next).ok());
  EXPECT_EQ(scheduler->queued(), 1);

  running.Open();
  ASSERT_TRUE(waiting.Wait());
  EXPECT_EQ(waiting.result.finish_reason, FinishReason::kCancelled);
  EXPECT_TRUE(waiting.result.token_ids.empty());
  ASSERT_TRUE(running.Wait());
  ASSERT_TRUE(next.Wait());
  EXPECT_EQ(running.result.finish_reason, FinishReason::kLength);
  EXPECT_EQ(next.result.finish_reason, FinishReason::kLength);
  EXPECT_EQ(next.result.token_ids, running.result.token_ids);
}

TEST_F(SchedulerTest, ExpiredWaitingRequestGivesItsPlaceBackAtOnce) {
  auto scheduler = Make(/*max_running=*/1, /*max_queued=*/1);
  Request running, waiting, refused, next;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, running));
  GenerationParams params = Params();
  params.deadline = absl::Now() + absl::Milliseconds(100);
  ASSERT_TRUE(scheduler->Submit("Once upon a time", params, waiting.Callbacks()).ok());
  EXPECT_EQ(Submit(*scheduler, refused).code(), absl::StatusCode::kResourceExhausted);

  // Nobody cancels it: its deadline alone frees the place.
  absl::SleepFor(params.deadline - absl::Now());
  EXPECT_TRUE(Submit(*scheduler, next).ok());

  running.Open();
  ASSERT_TRUE(waiting.Wait());
  EXPECT_EQ(waiting.result.finish_reason, FinishReason::kCancelled);
  ASSERT_TRUE(next.Wait());
  EXPECT_EQ(next.result.finish_reason, FinishReason::kLength);
}

TEST_F(SchedulerTest, NoWaitingLineAdmitsWhileASlotIsFree) {
  auto scheduler = Make(/*max_running=*/2, /*max_queued=*/0);
  Request first, second, refused, again;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, first));
  ASSERT_TRUE(Submit(*scheduler, second).ok());
  absl::Status status = Submit(*scheduler, refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;

  first.Open();
  ASSERT_TRUE(first.Wait());
  // Told it ended, a caller finds its place free.
  EXPECT_TRUE(Submit(*scheduler, again).ok());
  ASSERT_TRUE(second.Wait());
  ASSERT_TRUE(again.Wait());
  EXPECT_EQ(again.result.finish_reason, FinishReason::kLength);
}

TEST_F(SchedulerTest, BatchNeedsASinglePlace) {
  auto scheduler = Make(/*max_running=*/2, /*max_queued=*/0);
  Request first, refused, after;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, first));

  Request batch[3];
  std::vector<GenerationCallbacks> callbacks;
  for (Request& r : batch) callbacks.push_back(r.Callbacks());
  auto handles = scheduler->SubmitBatch({"Once upon a time", "Lily", "The dog"}, {Params()},
                                        std::move(callbacks));
  ASSERT_TRUE(handles.ok()) << handles.status();
  EXPECT_EQ(handles->size(), 3u);
  // Its prompts hold their places: later requests wait their turn.
  EXPECT_EQ(Submit(*scheduler, refused).code(), absl::StatusCode::kResourceExhausted);

  first.Open();
  for (Request& r : batch) {
    ASSERT_TRUE(r.Wait());
    EXPECT_EQ(r.result.finish_reason, FinishReason::kLength);
  }
  ASSERT_TRUE(first.Wait());
  EXPECT_EQ(batch[0].result.token_ids, first.result.token_ids);
  EXPECT_TRUE(Submit(*scheduler, after).ok());
  ASSERT_TRUE(after.Wait());
}

TEST_F(SchedulerTest, BatchIsAllOrNothing) {
  auto scheduler = Make(/*max_running=*/2, /*max_queued=*/0);
  Request batch[2];
  std::vector<GenerationCallbacks> callbacks;
  for (Request& r : batch) callbacks.push_back(r.Callbacks());
  // Longer than the context: refused, and so is the prompt before it.
  std::string too_long;
  for (int i = 0; i < 300; ++i) too_long += "Once upon a time ";
  auto handles = scheduler->SubmitBatch({"Once upon a time", too_long}, {Params()},
                                        std::move(callbacks));
  EXPECT_EQ(handles.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(handles.status().message().substr(0, 10), "prompt 1: ");
  EXPECT_EQ(scheduler->queued(), 0);
  EXPECT_EQ(scheduler->running(), 0);
}

TEST_F(SchedulerTest, ShutdownWithReasonFailsRunningAndWaitingRequests) {
  auto scheduler = Make(/*max_running=*/1, /*max_queued=*/1);
  Request running, waiting;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, running));
  ASSERT_TRUE(Submit(*scheduler, waiting).ok());

  const absl::Status reason = absl::UnavailableError("model \"m\" was unloaded");
  std::thread stopper([&] { scheduler->Shutdown(reason); });
  // Full until the shutdown begins; then Submit answers with its reason.
  const absl::Status status = SubmitWhileFull(*scheduler);
  EXPECT_EQ(status, reason);
  running.Open();
  stopper.join();

  for (Request* r : {&running, &waiting}) {
    ASSERT_TRUE(r->Wait());
    EXPECT_EQ(r->result.finish_reason, FinishReason::kError);
    EXPECT_EQ(r->result.status, reason);
  }
}

TEST_F(SchedulerTest, PlainShutdownCancelsAndSaysSo) {
  auto scheduler = Make(/*max_running=*/1, /*max_queued=*/1);
  Request running, waiting;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, running));
  ASSERT_TRUE(Submit(*scheduler, waiting).ok());
  running.Open();
  scheduler->Shutdown();
  for (Request* r : {&running, &waiting}) {
    ASSERT_TRUE(r->Wait());
    EXPECT_NE(r->result.finish_reason, FinishReason::kError);
  }
  Request late;
  const absl::Status status = Submit(*scheduler, late);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "the server is shutting down");
}

TEST_F(SchedulerTest, BatchEntriesSampleWithTheirOwnParamsAndReportTopLogprobs) {
  auto scheduler = Make(/*max_running=*/4, /*max_queued=*/0);
  std::vector<GenerationParams> params(3, Params());
  for (GenerationParams& p : params) {
    p.sampling.temperature = 1.0f;
    p.sampling.top_logprobs = 3;
    p.max_new_tokens = 16;
  }
  params[0].sampling.seed = 1;
  params[1].sampling.seed = 1;
  params[2].sampling.seed = 2;
  Request batch[3];
  std::vector<std::vector<TokenEvent>> events(3);
  std::vector<GenerationCallbacks> callbacks;
  for (int i = 0; i < 3; ++i) {
    callbacks.push_back(batch[i].Callbacks());
    callbacks.back().on_token = [&events, i](const TokenEvent& e) { events[i].push_back(e); };
  }
  auto handles = scheduler->SubmitBatch({"Once upon a time", "Once upon a time",
                                         "Once upon a time"},
                                        params, std::move(callbacks));
  ASSERT_TRUE(handles.ok()) << handles.status();
  for (Request& r : batch) ASSERT_TRUE(r.Wait());
  EXPECT_EQ(batch[0].result.token_ids, batch[1].result.token_ids);
  EXPECT_NE(batch[0].result.token_ids, batch[2].result.token_ids);
  for (const TokenEvent& e : events[0]) {
    ASSERT_EQ(e.top_logprobs.size(), 3u);
    EXPECT_GE(e.top_logprobs[0].logprob, e.top_logprobs[1].logprob);
    EXPECT_GE(e.top_logprobs[1].logprob, e.top_logprobs[2].logprob);
    // The most likely token is at least as likely as the sampled one.
    EXPECT_GE(e.top_logprobs[0].logprob, e.logprob);
    EXPECT_LE(e.logprob, 0);
  }
  EXPECT_EQ(scheduler->SubmitBatch({"a", "b"}, {Params(), Params(), Params()},
                                   std::vector<GenerationCallbacks>(2))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Drain refuses new work at once but lets running and waiting requests
// finish normally; it returns true when none is left.
TEST_F(SchedulerTest, DrainFinishesInFlightAndRefusesNew) {
  auto scheduler = Make(/*max_running=*/1, /*max_queued=*/1);
  Request running, waiting;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, running));
  ASSERT_TRUE(Submit(*scheduler, waiting).ok());
  bool drained = false;
  std::thread drainer([&] { drained = scheduler->Drain(absl::Now() + kPrompt); });
  const absl::Status status = SubmitWhileFull(*scheduler);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "the server is shutting down");
  running.Open();
  drainer.join();
  EXPECT_TRUE(drained);
  for (Request* r : {&running, &waiting}) {
    ASSERT_TRUE(r->Wait());
    EXPECT_EQ(r->result.finish_reason, FinishReason::kLength);
    EXPECT_EQ(r->result.token_ids.size(), 8u);
  }
}

// At its deadline Drain gives up, leaving the request running for Shutdown.
TEST_F(SchedulerTest, DrainStopsWaitingAtItsDeadline) {
  auto scheduler = Make(/*max_running=*/1, /*max_queued=*/0);
  Request running;
  ASSERT_NO_FATAL_FAILURE(StartGated(*scheduler, running));
  const absl::Time start = absl::Now();
  EXPECT_FALSE(scheduler->Drain(start + absl::Milliseconds(200)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_FALSE(running.done.HasBeenNotified());
  const absl::Status reason = absl::UnavailableError("grace over");
  std::thread stopper([&] { scheduler->Shutdown(reason); });
  // The gate opens once the shutdown has begun (Submit answers its reason,
  // after the drain's own UNAVAILABLE).
  for (int i = 0; i < 10000; ++i) {
    Request late;
    if (Submit(*scheduler, late) == reason) break;
    absl::SleepFor(absl::Milliseconds(1));
  }
  running.Open();
  stopper.join();
  ASSERT_TRUE(running.Wait());
  EXPECT_EQ(running.result.finish_reason, FinishReason::kError);
  EXPECT_EQ(running.result.status, reason);
}

constexpr char kLongPrompt[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her friends.";

// Greedy generations of `prompts`, submitted together to a scheduler with
// `options`, each with its streamed token texts.
struct Generation {
  GenerationResult result;
  std::vector<std::string> token_texts;
};
std::vector<Generation> GenerateAll(std::shared_ptr<const LlamaModel> model,
                                    std::shared_ptr<const Tokenizer> tokenizer,
                                    GenerationScheduler::Options options,
                                    const std::vector<std::string>& prompts,
                                    const GenerationParams& params) {
  GenerationScheduler scheduler(std::move(model), std::move(tokenizer), options);
  std::vector<Generation> out(prompts.size());
  std::vector<std::unique_ptr<absl::Notification>> done;
  for (size_t i = 0; i < prompts.size(); ++i) {
    done.push_back(std::make_unique<absl::Notification>());
    GenerationCallbacks callbacks;
    callbacks.on_token = [&out, i](const TokenEvent& e) { out[i].token_texts.push_back(e.text); };
    callbacks.on_done = [&out, &done, i](const GenerationResult& r) {
      out[i].result = r;
      done[i]->Notify();
    };
    EXPECT_TRUE(scheduler.Submit(prompts[i], params, std::move(callbacks)).ok());
  }
  for (auto& d : done) EXPECT_TRUE(d->WaitForNotificationWithTimeout(kPrompt));
  return out;
}

// A prompt fed 3 tokens per step (the budget shared by both sequences) gives
// the tokens of a prompt fed at once.
TEST_F(SchedulerTest, PrefillInSmallChunksGivesTheSameTokens) {
  GenerationParams params = Params();
  params.max_new_tokens = 16;
  const std::vector<std::string> prompts = {kLongPrompt, "Once upon a time"};
  GenerationScheduler::Options whole;
  whole.prefill_chunk = 256;
  GenerationScheduler::Options chunked;
  chunked.prefill_chunk = 3;
  const std::vector<Generation> reference = GenerateAll(*model_, *tokenizer_, whole, prompts, params);
  const std::vector<Generation> in_chunks =
      GenerateAll(*model_, *tokenizer_, chunked, prompts, params);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_GT(reference[i].result.prompt_tokens, 3) << i;
    EXPECT_EQ(reference[i].result.token_ids.size(), 16u) << i;
    EXPECT_EQ(in_chunks[i].result.token_ids, reference[i].result.token_ids) << i;
  }
}

// A stop sequence made of the end of one token's text and the start of the
// next ends generation before it, with nothing of it streamed.
TEST_F(SchedulerTest, StopSequenceAcrossTokensEndsBeforeIt) {
  GenerationParams params = Params();
  params.max_new_tokens = 24;
  const Generation free =
      GenerateAll(*model_, *tokenizer_, {}, {kLongPrompt}, params).front();
  const std::vector<std::string>& texts = free.token_texts;
  size_t i = 0;
  while (i + 1 < texts.size() && (texts[i].size() < 2 || texts[i + 1].size() < 2)) ++i;
  ASSERT_LT(i + 1, texts.size()) << free.result.text;
  const std::string stop = texts[i].substr(texts[i].size() - 2) + texts[i + 1].substr(0, 2);
  const size_t at = free.result.text.find(stop);
  ASSERT_NE(at, std::string::npos);

  params.stop_sequences = {"never in this story", stop};
  const Generation stopped =
      GenerateAll(*model_, *tokenizer_, {}, {kLongPrompt}, params).front();
  EXPECT_EQ(stopped.result.finish_reason, FinishReason::kStopSequence) << stop;
  EXPECT_EQ(stopped.result.text, free.result.text.substr(0, at)) << stop;
  std::string streamed;
  for (const std::string& t : stopped.token_texts) streamed += t;
  EXPECT_EQ(streamed, stopped.result.text);
}

}  // namespace
}  // namespace wq
