// One loop serves every generation request of a model (continuous batching):
// new requests join at the next step, their prompts prefilled in slices so
// running decodes never stall for long; each step runs the new tokens of all
// running sequences through the model in one pass over the weights; finished
// and cancelled sequences leave at once. Requests beyond max_running wait in
// a queue of max_queued; beyond that, Submit fails with RESOURCE_EXHAUSTED. A
// waiting request that is cancelled or past its deadline gives its place
// back at once. A batch needs one free place; its other prompts may wait
// beyond max_queued.
#ifndef WQ_COMMON_SCHEDULER_H_
#define WQ_COMMON_SCHEDULER_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/serving/generation_metrics.h"
#include "common/model/llama.h"
#include "common/serving/sampler.h"
#include "common/tokenizer/tokenizer.h"

namespace wq {

struct GenerationParams {
  SamplingOptions sampling;
  int max_new_tokens = 128;
  std::vector<std::string> stop_sequences;
  // The tokenizer's own prefix (BOS) before the prompt; false when the prompt
  // already carries one (a chat template's).
  bool add_bos = true;
  // Past it the request ends as cancelled; waiting, it frees its place at
  // once (the caller's RPC deadline, which may pass before it notices).
  absl::Time deadline = absl::InfiniteFuture();
};

enum class FinishReason { kLength, kEos, kStopSequence, kCancelled, kError };

struct TokenEvent {
  int id = 0;
  std::string text;  // newly visible text (see TextStream)
  float logprob = 0;  // see SampledToken
  std::vector<TokenLogprob> top_logprobs;  // sampling.top_logprobs of them
};

struct GenerationResult {
  FinishReason finish_reason = FinishReason::kLength;
  absl::Status status;  // non-OK only with kError
  std::string text;
  std::vector<int> token_ids;
  int prompt_tokens = 0;
  double queue_ms = 0;
  double time_to_first_token_ms = 0;
  double total_ms = 0;
  double decode_tokens_per_second = 0;
};

// Called on the scheduler's thread: keep them short and non-blocking.
struct GenerationCallbacks {
  std::function<void(const TokenEvent&)> on_token;
  std::function<void(const GenerationResult&)> on_done;  // exactly once
};

class GenerationScheduler {
 public:
  struct Options {
    int max_running = 8;      // sequences decoded together
    int max_queued = 64;      // waiting beyond max_running; 0: none wait
    int prefill_chunk = 256;  // prompt tokens per step, over all sequences
    int max_context = 0;      // tokens per sequence; 0: the model's maximum
    KvCacheDtype kv_cache_dtype = KvCacheDtype::kF32;
    std::string model_name;  // the model_name label of its metrics
    // Ids that also end generation as EOS, besides the tokenizer's EOS and
    // the config's eos_token_ids (the chat template's end of turn).
    std::vector<int> end_ids;
  };

  // A submitted request; Cancel() makes it finish with kCancelled at the
  // next step and frees its KV cache. A waiting one frees its place at once.
  class Handle {
   public:
    void Cancel() { cancelled_.store(true); }
    bool cancelled() const { return cancelled_.load(); }

   private:
    std::atomic<bool> cancelled_{false};
  };

  GenerationScheduler(std::shared_ptr<const LlamaModel> model,
                      std::shared_ptr<const Tokenizer> tokenizer, Options options);
  // Cancels everything still queued or running, then joins the loop.
  ~GenerationScheduler();

  // INVALID_ARGUMENT: bad sampling options or a prompt that leaves no room in
  // the context; RESOURCE_EXHAUSTED: every running and waiting place taken;
  // UNAVAILABLE (or the reason given to Shutdown): shutting down.
  absl::StatusOr<std::shared_ptr<Handle>> Submit(const std::string& prompt,
                                                 const GenerationParams& params,
                                                 GenerationCallbacks callbacks);
  // A unary batch, all or nothing, with params[i] and callbacks[i] for
  // prompts[i] (params of one entry serve all prompts). It needs
  // a single free place rather than one per prompt, so that it is not refused
  // for ever while streams come and go; its prompts then wait in line as
  // requests would, each holding a place (refusing later requests) until it
  // ends. Errors of one prompt begin "prompt i: ".
  absl::StatusOr<std::vector<std::shared_ptr<Handle>>> SubmitBatch(
      const std::vector<std::string>& prompts, const std::vector<GenerationParams>& params,
      std::vector<GenerationCallbacks> callbacks);
  // Refuses new work as Shutdown does, lets every running and waiting request
  // finish, and returns true once none is left, or false at `deadline` with
  // some still in flight (Shutdown then ends them). Idempotent.
  bool Drain(absl::Time deadline);
  // Stops accepting work and ends all requests; returns once the loop ended.
  // With OK they finish as kCancelled (server shutdown); otherwise they fail
  // with kError and `reason`, which later Submits return too.
  void Shutdown(absl::Status reason = absl::OkStatus());

  const Options& options() const { return options_; }
  int max_context() const { return max_context_; }
  int running() const { return running_count_.load(); }
  int queued() const;

 private:
  struct Sequence;
  absl::StatusOr<std::unique_ptr<Sequence>> Prepare(const std::string& prompt,
                                                    const GenerationParams& params,
                                                    GenerationCallbacks callbacks) const;
  // Queues all of `seqs` if a place is free, else none.
  absl::StatusOr<std::vector<std::shared_ptr<Handle>>> Enqueue(
      std::vector<std::unique_ptr<Sequence>> seqs);
  void Loop();
  void Step(std::vector<std::unique_ptr<Sequence>>& running);
  void Finish(Sequence& seq, FinishReason reason, absl::Status status = absl::OkStatus());
  // Moves cancelled or expired waiting requests to dropped_, freeing their
  // places.
  void DropAbandonedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<const LlamaModel> model_;
  // The tokenizer's EOS or any of the model's eos_token_ids (config.json and
  // generation_config.json: an instruct model's end-of-turn ids).
  bool IsEndOfText(int id) const;
  std::shared_ptr<const Tokenizer> tokenizer_;
  Options options_;
  int max_context_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Sequence>> queue_ ABSL_GUARDED_BY(mu_);
  // Cancelled or expired while waiting; the loop reports them (callbacks run
  // there).
  std::vector<std::unique_ptr<Sequence>> dropped_ ABSL_GUARDED_BY(mu_);
  // Requests running or waiting, at most max_running + max_queued. Counted
  // here rather than from the loop's view so a place is free the moment its
  // request finishes or is abandoned while waiting.
  int places_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // refusing work, serving what it has
  absl::Status stop_reason_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> running_count_{0};
  // Last: its scrape-time gauges read the members above. Reset by Shutdown.
  std::unique_ptr<GenerationMetrics> metrics_;
  std::thread loop_;
};

}  // namespace wq

#endif  // WQ_COMMON_SCHEDULER_H_
