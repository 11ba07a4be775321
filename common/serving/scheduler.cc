#include "common/serving/scheduler.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/tokenizer/text_stream.h"

namespace wq {

struct GenerationScheduler::Sequence {
  std::shared_ptr<Handle> handle;
  GenerationParams params;
  GenerationCallbacks callbacks;
  std::vector<int> tokens;  // prompt, then generated ids
  int prompt_tokens = 0;
  int prefilled = 0;        // prompt tokens already in the cache
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<TextStream> text;
  GenerationResult result;
  absl::Time submitted, admitted, first_token, last_token;
  bool done = false;
  bool holds_place = true;  // counted in places_

  bool prefilling() const { return prefilled < prompt_tokens; }
  // Cancelled, or past its deadline.
  bool Abandoned(absl::Time now) const;
};

GenerationScheduler::GenerationScheduler(std::shared_ptr<const LlamaModel> model,
                                         std::shared_ptr<const Tokenizer> tokenizer,
                                         Options options)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), options_(options) {
  const int model_max = model_->config().max_position_embeddings;
  max_context_ = options_.max_context > 0 ? std::min(options_.max_context, model_max)
                                          : model_max;
  options_.max_running = std::max(1, options_.max_running);
  options_.prefill_chunk = std::max(1, options_.prefill_chunk);
  metrics_ = std::make_unique<GenerationMetrics>(
      options_.model_name, [this] { return queued(); }, [this] { return running(); });
  loop_ = std::thread([this] { Loop(); });
}

GenerationScheduler::~GenerationScheduler() { Shutdown(); }

bool GenerationScheduler::IsEndOfText(int id) const {
  const std::vector<int>& eos = model_->config().eos_token_ids;
  const std::vector<int>& end = options_.end_ids;
  return id == tokenizer_->eos_id() || std::find(eos.begin(), eos.end(), id) != eos.end() ||
         std::find(end.begin(), end.end(), id) != end.end();
}

void GenerationScheduler::Shutdown(absl::Status reason) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) stop_reason_ = std::move(reason);
    stopping_ = true;
  }
  if (loop_.joinable()) loop_.join();
  // The loop, the only recorder, ended: stop exporting this model's gauges.
  metrics_.reset();
}

bool GenerationScheduler::Drain(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return places_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int GenerationScheduler::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

absl::StatusOr<std::unique_ptr<GenerationScheduler::Sequence>> GenerationScheduler::Prepare(
    const std::string& prompt, const GenerationParams& params,
    GenerationCallbacks callbacks) const {
  if (absl::Status s = ValidateSamplingOptions(params.sampling); !s.ok()) return s;
  if (params.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", params.max_new_tokens));
  }
  absl::StatusOr<std::vector<int>> ids = tokenizer_->Encode(prompt, params.add_bos);
  if (!ids.ok()) return ids.status();
  if (static_cast<int>(ids->size()) >= max_context_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt is ", ids->size(), " tokens; the context holds ", max_context_,
        " and at least one must be left for generation"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->handle = std::make_shared<Handle>();
  seq->params = params;
  seq->callbacks = std::move(callbacks);
  seq->tokens = std::move(*ids);
  seq->prompt_tokens = static_cast<int>(seq->tokens.size());
  seq->submitted = absl::Now();
  return seq;
}

absl::StatusOr<std::shared_ptr<GenerationScheduler::Handle>> GenerationScheduler::Submit(
    const std::string& prompt, const GenerationParams& params,
    GenerationCallbacks callbacks) {
  absl::StatusOr<std::unique_ptr<Sequence>> seq =
      Prepare(prompt, params, std::move(callbacks));
  if (!seq.ok()) return seq.status();
  std::vector<std::unique_ptr<Sequence>> seqs;
  seqs.push_back(*std::move(seq));
  absl::StatusOr<std::vector<std::shared_ptr<Handle>>> handles = Enqueue(std::move(seqs));
  if (!handles.ok()) return handles.status();
  return handles->front();
}

absl::StatusOr<std::vector<std::shared_ptr<GenerationScheduler::Handle>>>
GenerationScheduler::SubmitBatch(const std::vector<std::string>& prompts,
                                 const std::vector<GenerationParams>& params,
                                 std::vector<GenerationCallbacks> callbacks) {
  if (callbacks.size() != prompts.size() ||
      (params.size() != 1 && params.size() != prompts.size())) {
    return absl::InvalidArgumentError(absl::StrCat(prompts.size(), " prompts but ",
                                                   params.size(), " params and ",
                                                   callbacks.size(), " callbacks"));
  }
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    absl::StatusOr<std::unique_ptr<Sequence>> seq =
        Prepare(prompts[i], params.size() == 1 ? params[0] : params[i],
                std::move(callbacks[i]));
    if (!seq.ok()) {
      return absl::Status(seq.status().code(),
                          absl::StrCat("prompt ", i, ": ", seq.status().message()));
    }
    seqs.push_back(*std::move(seq));
  }
  return Enqueue(std::move(seqs));
}

absl::StatusOr<std::vector<std::shared_ptr<GenerationScheduler::Handle>>>
GenerationScheduler::Enqueue(std::vector<std::unique_ptr<Sequence>> seqs) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || draining_) {
    if (!stop_reason_.ok()) return stop_reason_;
    return absl::UnavailableError("the server is shutting down");
  }
  const int places = options_.max_running + options_.max_queued;
  if (places_ >= places) DropAbandonedLocked();
  if (places_ >= places) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "generation queue is full (", options_.max_running, " running, ",
        options_.max_queued, " waiting); retry later"));
  }
  std::vector<std::shared_ptr<Handle>> handles;
  for (auto& seq : seqs) {
    handles.push_back(seq->handle);
    queue_.push_back(std::move(seq));
  }
  places_ += static_cast<int>(handles.size());
  return handles;
}

bool GenerationScheduler::Sequence::Abandoned(absl::Time now) const {
  return handle->cancelled() || now >= params.deadline;
}

void GenerationScheduler::DropAbandonedLocked() {
  const absl::Time now = absl::Now();
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!(*it)->Abandoned(now)) {
      ++it;
      continue;
    }
    (*it)->holds_place = false;
    --places_;
    dropped_.push_back(std::move(*it));
    it = queue_.erase(it);
  }
}

void GenerationScheduler::Finish(Sequence& seq, FinishReason reason, absl::Status status) {
  const absl::Time now = absl::Now();
  GenerationResult& r = seq.result;
  if (seq.text != nullptr) seq.text->Finish();
  r.finish_reason = reason;
  r.status = std::move(status);
  r.text = seq.text != nullptr ? seq.text->text() : "";
  r.token_ids.assign(seq.tokens.begin() + seq.prompt_tokens, seq.tokens.end());
  r.prompt_tokens = seq.prompt_tokens;
  r.queue_ms = absl::ToDoubleMilliseconds(
      (seq.admitted == absl::Time() ? now : seq.admitted) - seq.submitted);
  r.total_ms = absl::ToDoubleMilliseconds(now - seq.submitted);
  const int generated = static_cast<int>(r.token_ids.size());
  if (generated > 1) {
    const double seconds = absl::ToDoubleSeconds(now - seq.first_token);
    if (seconds > 0) r.decode_tokens_per_second = (generated - 1) / seconds;
  }
  metrics_->OnFinish(reason, absl::Milliseconds(r.queue_ms), now - seq.submitted);
  seq.done = true;
  seq.cache.reset();
  // Before on_done, so that a caller told of the end may submit again.
  if (seq.holds_place) {
    absl::MutexLock lock(&mu_);
    --places_;
    seq.holds_place = false;
  }
  if (seq.callbacks.on_done) seq.callbacks.on_done(r);
}

void GenerationScheduler::Loop() {
  std::vector<std::unique_ptr<Sequence>> running;
  while (true) {
    std::vector<std::unique_ptr<Sequence>> dropped;
    std::vector<std::unique_ptr<Sequence>> admitted;
    bool stopping;
    absl::Status stop_reason;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this, &running]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty() || !running.empty() || !dropped_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      DropAbandonedLocked();
      dropped.swap(dropped_);
      stopping = stopping_;
      stop_reason = stop_reason_;
      if (stopping_) {
        for (auto& seq : queue_) running.push_back(std::move(seq));
        queue_.clear();
      } else {
        while (static_cast<int>(running.size()) + static_cast<int>(admitted.size()) <
                   options_.max_running &&
               !queue_.empty()) {
          admitted.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
    }
    // Outside the lock: a KV cache may take a while to allocate, and Submit
    // must not wait for it.
    for (auto& seq : admitted) {
      seq->admitted = absl::Now();
      const int capacity =
          std::min<int>(max_context_, seq->prompt_tokens + seq->params.max_new_tokens);
      seq->cache = std::make_unique<KVCache>(model_->config(), capacity, options_.kv_cache_dtype);
      seq->sampler = std::make_unique<Sampler>(seq->params.sampling);
      seq->text = std::make_unique<TextStream>(
          *tokenizer_, /*at_sequence_start=*/seq->prompt_tokens <= 1, seq->params.stop_sequences);
      running.push_back(std::move(seq));
    }
    for (auto& seq : dropped) Finish(*seq, FinishReason::kCancelled);
    if (stopping) {
      for (auto& seq : running) {
        if (stop_reason.ok()) {
          Finish(*seq, FinishReason::kCancelled);
        } else {
          Finish(*seq, FinishReason::kError, stop_reason);
        }
      }
      running_count_.store(0);
      return;
    }
    const absl::Time now = absl::Now();
    for (auto& seq : running) {
      if (seq->Abandoned(now)) Finish(*seq, FinishReason::kCancelled);
    }
    running.erase(std::remove_if(running.begin(), running.end(),
                                 [](const auto& s) { return s->done; }),
                  running.end());
    running_count_.store(static_cast<int>(running.size()));
    if (!running.empty()) Step(running);
    running.erase(std::remove_if(running.begin(), running.end(),
                                 [](const auto& s) { return s->done; }),
                  running.end());
    running_count_.store(static_cast<int>(running.size()));
    int kv_used = 0, kv_capacity = 0;
    for (const auto& seq : running) {
      // Slots, not positions: a windowed model's cache holds the window.
      kv_used += seq->cache->held();
      kv_capacity += seq->cache->slots();
    }
    metrics_->SetKvCache(kv_used, kv_capacity);
  }
}

void GenerationScheduler::Step(std::vector<std::unique_ptr<Sequence>>& running) {
  // Decodes first (one token each), then prompt slices within the budget.
  std::vector<SequenceChunk> chunks;
  std::vector<Sequence*> owners;
  int prefill_budget = options_.prefill_chunk;
  for (auto& seq : running) {
    if (seq->prefilling()) continue;
    SequenceChunk c;
    c.cache = seq->cache.get();
    c.start_pos = static_cast<int>(seq->tokens.size()) - 1;
    c.tokens = absl::MakeConstSpan(seq->tokens).subspan(c.start_pos, 1);
    chunks.push_back(c);
    owners.push_back(seq.get());
  }
  for (auto& seq : running) {
    if (!seq->prefilling() || prefill_budget == 0) continue;
    const int n = std::min(prefill_budget, seq->prompt_tokens - seq->prefilled);
    SequenceChunk c;
    c.cache = seq->cache.get();
    c.start_pos = seq->prefilled;
    c.tokens = absl::MakeConstSpan(seq->tokens).subspan(seq->prefilled, n);
    chunks.push_back(c);
    owners.push_back(seq.get());
    prefill_budget -= n;
  }

  std::vector<float> logits;
  if (absl::Status s = model_->Forward(chunks, &logits); !s.ok()) {
    for (Sequence* seq : owners) Finish(*seq, FinishReason::kError, s);
    return;
  }
  const int vocab = model_->config().vocab_size;
  for (size_t i = 0; i < owners.size(); ++i) {
    Sequence& seq = *owners[i];
    if (seq.prefilling()) {
      seq.prefilled += static_cast<int>(chunks[i].tokens.size());
      metrics_->OnPromptTokens(static_cast<int>(chunks[i].tokens.size()));
      if (seq.prefilling()) continue;  // logits of a mid-prompt slice are unused
    }
    SampledToken sampled =
        seq.sampler->Sample(absl::MakeConstSpan(logits).subspan(i * vocab, vocab), seq.tokens);
    TokenEvent event;
    event.id = sampled.id;
    event.logprob = sampled.logprob;
    event.top_logprobs = std::move(sampled.top);
    seq.tokens.push_back(event.id);
    const int generated = static_cast<int>(seq.tokens.size()) - seq.prompt_tokens;
    const absl::Time sampled_at = absl::Now();
    if (generated == 1) {
      seq.first_token = sampled_at;
      seq.result.time_to_first_token_ms =
          absl::ToDoubleMilliseconds(seq.first_token - seq.submitted);
      metrics_->OnFirstToken(sampled_at - seq.submitted);
    } else {
      metrics_->OnNextToken(sampled_at - seq.last_token);
    }
    seq.last_token = sampled_at;
    const TextStream::Step text = seq.text->Append(event.id);
    event.text = text.text;
    std::optional<FinishReason> finish;
    if (text.stopped) {
      finish = FinishReason::kStopSequence;
    } else if (IsEndOfText(event.id)) {
      finish = FinishReason::kEos;
    } else if (generated >= seq.params.max_new_tokens ||
               static_cast<int>(seq.tokens.size()) >= seq.cache->max_positions()) {
      finish = FinishReason::kLength;
    }
    // Text held back for a possible stop sequence belongs to the last token.
    if (finish.has_value() && *finish != FinishReason::kStopSequence) {
      event.text += seq.text->Finish();
    }
    if (seq.callbacks.on_token) seq.callbacks.on_token(event);
    if (finish.has_value()) Finish(seq, *finish);
  }
}

}  // namespace wq
