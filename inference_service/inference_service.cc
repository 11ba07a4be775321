#include "inference_service/inference_service.h"

#include "common/kernels/cpu_features.h"
#include "common/io/status_macros.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/kernels/cpu_features.h"
#include "common/io/logging.h"
#include "common/serving/sampler.h"
#include "common/tokenizer/tokenizer.h"
#include "server/request_log.h"
#include "server/request_validation.h"
#include "server/server.h"

namespace wq {
namespace {

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::LENGTH;
    case FinishReason::kEos: return v1::EOS;
    case FinishReason::kStopSequence: return v1::STOP_SEQUENCE;
    case FinishReason::kCancelled: return v1::CANCELLED;
    case FinishReason::kError: return v1::FINISH_REASON_UNSPECIFIED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

// Token counts of a finished generation on the RPC's "request" log line.
void LogTokenCounts(const grpc::ServerContextBase& context, const LoadedModel& model,
                    int prompt_tokens, int generated_tokens) {
  AddRequestLogFields(context, {{"model", model.info.model()},
                                {"prompt_tokens", prompt_tokens},
                                {"generated_tokens", generated_tokens}});
}

void FillUsageAndTimings(const GenerationResult& r, v1::Usage* usage,
                         v1::Timings* timings) {
  usage->set_prompt_tokens(r.prompt_tokens);
  usage->set_completion_tokens(static_cast<int>(r.token_ids.size()));
  timings->set_queue_ms(r.queue_ms);
  timings->set_time_to_first_token_ms(r.time_to_first_token_ms);
  timings->set_total_ms(r.total_ms);
  timings->set_decode_tokens_per_second(r.decode_tokens_per_second);
}

uint64_t RandomSeed() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::Uniform<uint64_t>(*gen);
}

// The RPC's deadline, so that a waiting request frees its place the moment it
// passes.
absl::Time Deadline(const grpc::ServerContextBase& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

absl::Status ValidateModelName(const std::string& model) {
  if (model.empty()) {
    return absl::InvalidArgumentError(
        "model is empty; pass an artifact id or a model id (see ListModels)");
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* FinishedUnary(grpc::CallbackServerContext* context,
                                        const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// A stream that ends at once with `status` (a refused request).
class FinishedStream : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  explicit FinishedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// Generate's and Chat's path: the prompts go to the scheduler as one batch,
// and the last to finish completes the call. The reactor outlives every
// scheduler callback, since it finishes only after the last one.
class BatchReactor : public grpc::ServerUnaryReactor {
 public:
  BatchReactor(grpc::CallbackServerContext* context, std::shared_ptr<LoadedModel> model,
               google::protobuf::RepeatedPtrField<v1::GenerationResult>* results)
      : context_(context), model_(std::move(model)), out_(results) {}

  void Start(const std::vector<std::string>& prompts, const GenerationParams& params) {
    const int n = static_cast<int>(prompts.size());
    {
      absl::MutexLock lock(&mu_);
      results_.resize(n);
      pending_ = n + 1;  // + Start itself, so no callback finishes while it runs
    }
    std::vector<GenerationCallbacks> callbacks(n);
    for (int i = 0; i < n; ++i) {
      callbacks[i].on_done = [this, i](const GenerationResult& result) {
        {
          absl::MutexLock lock(&mu_);
          results_[i] = result;
        }
        Arrive();
      };
    }
    // All or nothing (a partial batch is of no use to the caller), admitted
    // once a single place is free.
    absl::StatusOr<std::vector<std::shared_ptr<GenerationScheduler::Handle>>> handles =
        model_->scheduler->SubmitBatch(prompts, {params}, std::move(callbacks));
    if (!handles.ok()) {
      Finish(ToGrpcStatus(handles.status()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      handles_ = *std::move(handles);
      if (cancelled_) CancelAllLocked();
    }
    Arrive();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    CancelAllLocked();
  }
  void OnDone() override { delete this; }

 private:
  void CancelAllLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // The scheduler drops them at its next step and reports them done.
    for (auto& handle : handles_) handle->Cancel();
  }

  // Finishing is the last thing it does: OnDone may delete the reactor then.
  void Arrive() {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (--pending_ > 0) return;
      status = CompleteLocked();
    }
    Finish(status);
  }

  grpc::Status CompleteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cancelled_) return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    int prompt_tokens = 0, generated_tokens = 0;
    for (size_t i = 0; i < results_.size(); ++i) {
      const GenerationResult& r = *results_[i];
      prompt_tokens += r.prompt_tokens;
      generated_tokens += static_cast<int>(r.token_ids.size());
      if (r.finish_reason == FinishReason::kError) {
        return ToGrpcStatus(absl::Status(
            r.status.code(), absl::StrCat("prompt ", i, ": ", r.status.message())));
      }
      v1::GenerationResult* out = out_->Add();
      out->set_text(r.text);
      out->mutable_token_ids()->Add(r.token_ids.begin(), r.token_ids.end());
      out->set_finish_reason(ToProto(r.finish_reason));
      FillUsageAndTimings(r, out->mutable_usage(), out->mutable_timings());
    }
    LogTokenCounts(*context_, *model_, prompt_tokens, generated_tokens);
    return grpc::Status::OK;
  }

  grpc::CallbackServerContext* const context_;
  const std::shared_ptr<LoadedModel> model_;
  google::protobuf::RepeatedPtrField<v1::GenerationResult>* const out_;
  absl::Mutex mu_;
  std::vector<std::optional<GenerationResult>> results_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<GenerationScheduler::Handle>> handles_ ABSL_GUARDED_BY(mu_);
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

v1::GenerateStreamResponse TokenMessage(const TokenEvent& event) {
  v1::GenerateStreamResponse message;
  v1::Token* token = message.mutable_token();
  token->set_id(event.id);
  token->set_text(event.text);
  token->set_logprob(event.logprob);
  for (const TokenLogprob& top : event.top_logprobs) {
    v1::TokenLogprob* alternative = token->add_top_logprobs();
    alternative->set_id(top.id);
    alternative->set_logprob(top.logprob);
  }
  return message;
}

// GenerateStream's and ChatStream's path: a Token message for each token the
// scheduler reports, written one at a time as the client takes them, then
// End. It finishes only after the scheduler's last callback (on_done), so
// the callbacks never outlive it; a client that goes away cancels the
// request, which the scheduler then reports done at its next step.
class StreamReactor : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  StreamReactor(grpc::CallbackServerContext* context, std::shared_ptr<LoadedModel> model)
      : context_(context), model_(std::move(model)) {}

  void Start(const std::string& prompt, const GenerationParams& params) {
    GenerationCallbacks callbacks;
    callbacks.on_token = [this](const TokenEvent& event) {
      absl::ReleasableMutexLock lock(&mu_);
      if (!client_gone_) outbox_.push_back(TokenMessage(event));
      Run(lock);
    };
    callbacks.on_done = [this](const GenerationResult& result) {
      absl::ReleasableMutexLock lock(&mu_);
      generation_done_ = true;
      LogTokenCounts(*context_, *model_, result.prompt_tokens,
                     static_cast<int>(result.token_ids.size()));
      if (result.finish_reason == FinishReason::kError) {
        final_status_ = ToGrpcStatus(result.status);
      } else if (!client_gone_) {
        v1::GenerateStreamResponse message;
        v1::StreamEnd* end = message.mutable_end();
        end->set_finish_reason(ToProto(result.finish_reason));
        FillUsageAndTimings(result, end->mutable_usage(), end->mutable_timings());
        end->set_text(result.text);
        outbox_.push_back(std::move(message));
      }
      Run(lock);
    };
    absl::StatusOr<std::shared_ptr<GenerationScheduler::Handle>> handle =
        model_->scheduler->Submit(prompt, params, std::move(callbacks));
    if (!handle.ok()) {
      Finish(ToGrpcStatus(handle.status()));
      return;
    }
    absl::ReleasableMutexLock lock(&mu_);
    handle_ = *std::move(handle);
    if (client_gone_) handle_->Cancel();
    starting_ = false;
    Run(lock);
  }

  void OnWriteDone(bool ok) override {
    absl::ReleasableMutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) ClientGoneLocked();
    Run(lock);
  }
  void OnCancel() override {
    absl::ReleasableMutexLock lock(&mu_);
    ClientGoneLocked();
    Run(lock);
  }
  void OnDone() override { delete this; }

 private:
  // What to do next, decided under mu_ and done after releasing it.
  struct Action {
    const v1::GenerateStreamResponse* write = nullptr;
    std::optional<grpc::Status> finish;
  };

  void ClientGoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    client_gone_ = true;
    outbox_.clear();
    if (handle_ != nullptr) handle_->Cancel();
  }

  // The next write when none is in flight, else the finish once the
  // generation is done and all of it is written.
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (starting_ || write_in_flight_ || finished_) return {};
    if (!outbox_.empty()) {
      writing_ = std::move(outbox_.front());
      outbox_.pop_front();
      write_in_flight_ = true;
      return {&writing_, std::nullopt};
    }
    if (!generation_done_) return {};
    finished_ = true;
    if (client_gone_) return {nullptr, grpc::Status(grpc::StatusCode::CANCELLED, "client went away")};
    return {nullptr, final_status_};
  }

  // Does the next action after releasing the lock: Finish may lead to OnDone
  // deleting the reactor, so it is the last thing done.
  void Run(absl::ReleasableMutexLock& lock) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    const Action action = NextLocked();
    lock.Release();
    if (action.write != nullptr) {
      StartWrite(action.write);
    } else if (action.finish.has_value()) {
      Finish(*action.finish);
    }
  }

  grpc::CallbackServerContext* const context_;
  const std::shared_ptr<LoadedModel> model_;
  absl::Mutex mu_;
  std::shared_ptr<GenerationScheduler::Handle> handle_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::GenerateStreamResponse> outbox_ ABSL_GUARDED_BY(mu_);
  v1::GenerateStreamResponse writing_;  // owned by the write in flight
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  bool starting_ ABSL_GUARDED_BY(mu_) = true;  // until Start has the handle
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool generation_done_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

v1::SamplingParams WithGenerationDefaults(v1::SamplingParams sampling,
                                          const GenerationDefaults& defaults) {
  if (!sampling.has_temperature() && defaults.temperature.has_value()) {
    sampling.set_temperature(*defaults.temperature);
  }
  if (!sampling.has_top_k() && defaults.top_k.has_value()) sampling.set_top_k(*defaults.top_k);
  if (!sampling.has_top_p() && defaults.top_p.has_value()) sampling.set_top_p(*defaults.top_p);
  if (!sampling.has_repetition_penalty() && defaults.repetition_penalty.has_value()) {
    sampling.set_repetition_penalty(*defaults.repetition_penalty);
  }
  return sampling;
}

absl::StatusOr<GenerationParams> ToGenerationParams(const v1::SamplingParams& s,
                                                    const InferenceLimits& limits) {
  GenerationParams params;
  if (s.temperature() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.temperature must be >= 0 (0 = greedy), got ", s.temperature()));
  }
  params.sampling.temperature = s.temperature();
  if (s.top_k() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k must be >= 0 (0 = no limit), got ", s.top_k()));
  }
  params.sampling.top_k = s.top_k();
  if (s.has_top_p()) {
    if (!(s.top_p() > 0 && s.top_p() <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.top_p must be in (0, 1], got ", s.top_p()));
    }
    params.sampling.top_p = s.top_p();
  }
  if (s.has_repetition_penalty()) {
    if (!(s.repetition_penalty() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.repetition_penalty must be > 0 (1 = off), got ",
          s.repetition_penalty()));
    }
    params.sampling.repetition_penalty = s.repetition_penalty();
  }
  params.sampling.presence_penalty = s.presence_penalty();
  params.sampling.frequency_penalty = s.frequency_penalty();
  params.sampling.top_logprobs = s.top_logprobs();
  params.sampling.seed = s.has_seed() ? s.seed() : RandomSeed();
  if (s.has_max_new_tokens()) {
    if (s.max_new_tokens() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.max_new_tokens must be >= 1, got ", s.max_new_tokens()));
    }
    if (s.max_new_tokens() > limits.max_new_tokens_cap) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.max_new_tokens ", s.max_new_tokens(),
          " exceeds this server's cap of ", limits.max_new_tokens_cap));
    }
    params.max_new_tokens = s.max_new_tokens();
  } else {
    params.max_new_tokens =
        std::min(limits.default_max_new_tokens, limits.max_new_tokens_cap);
  }
  if (s.stop_sequences_size() > limits.max_stop_sequences) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", limits.max_stop_sequences,
                     " sampling.stop_sequences are allowed, got ", s.stop_sequences_size()));
  }
  for (const std::string& stop : s.stop_sequences()) {
    if (stop.empty()) {
      return absl::InvalidArgumentError("sampling.stop_sequences has an empty entry");
    }
    params.stop_sequences.push_back(stop);
  }
  // The library's own checks, so the service never accepts what it refuses.
  if (absl::Status status = ValidateSamplingOptions(params.sampling); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", status.message()));
  }
  return params;
}

absl::StatusOr<ChatPrompt> RenderConversation(
    const LoadedModel& model, const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
    bool add_generation_prompt) {
  if (messages.empty()) {
    return absl::InvalidArgumentError("messages is empty; pass at least one message");
  }
  std::vector<ChatMessage> chat;
  for (int i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role();
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role is \"", role,
                       "\"; use \"system\", \"user\" or \"assistant\""));
    }
    chat.push_back({role, messages[i].content()});
  }
  return RenderChat(model, std::move(chat), add_generation_prompt);
}

absl::StatusOr<PreparedGeneration> PrepareGeneration(const ModelManager& models,
                                                     const InferenceLimits& limits,
                                                     const std::string& model,
                                                     const v1::SamplingParams& sampling,
                                                     absl::Time deadline,
                                                     float default_temperature) {
  RETURN_IF_ERROR(ValidateModelName(model));
  PreparedGeneration prepared;
  ASSIGN_OR_RETURN(prepared.model, models.Get(model));
  v1::SamplingParams effective =
      WithGenerationDefaults(sampling, prepared.model->model->config().generation_defaults);
  if (!effective.has_temperature()) effective.set_temperature(default_temperature);
  ASSIGN_OR_RETURN(prepared.params, ToGenerationParams(effective, limits));
  prepared.params.deadline = deadline;
  return prepared;
}

absl::StatusOr<std::string> DetokenizeIds(const LoadedModel& model, absl::Span<const int> ids,
                                          bool skip_special_tokens) {
  const Tokenizer& tok = *model.tokenizer;
  // The model's vocabulary may be padded past the tokenizer's, and generated
  // ids come from the model's; Decode treats those as it documents.
  const int vocab = std::max(tok.vocab_size(), model.info.vocab_size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ids[", i, "] = ", ids[i], " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (skip_special_tokens) return tok.Decode(ids);
  // Decode drops control pieces; spelled out here between decoded runs.
  StreamingDetokenizer detokenizer(tok, /*at_sequence_start=*/true);
  std::string text;
  for (int id : ids) {
    text += detokenizer.Push(id);
    if (tok.Kind(id) == Tokenizer::PieceKind::kControl) text += tok.Piece(id);
  }
  return text + detokenizer.Flush();
}

absl::StatusOr<PreparedGeneration> InferenceServiceImpl::Prepare(
    const grpc::ServerContextBase& context, const std::string& model,
    const v1::SamplingParams& sampling) const {
  return PrepareGeneration(*models_, limits_, model, sampling, Deadline(context));
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Generate(grpc::CallbackServerContext* context,
                                                         const v1::GenerateRequest* request,
                                                         v1::GenerateResponse* response) {
  if (std::optional<grpc::Status> refusal = RequestRefusal(*request)) {
    return FinishedUnary(context, *refusal);
  }
  if (absl::Status s = ValidateModelName(request->model()); !s.ok()) {
    return FinishedUnary(context, ToGrpcStatus(s));
  }
  if (request->prompts().empty()) {
    return FinishedUnary(context, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                               "prompts is empty; pass at least one prompt"));
  }
  if (request->prompts_size() > limits_.max_prompts) {
    return FinishedUnary(
        context, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat("at most ", limits_.max_prompts,
                                           " prompts per request, got ", request->prompts_size())));
  }
  absl::StatusOr<PreparedGeneration> prepared =
      Prepare(*context, request->model(), request->sampling());
  if (!prepared.ok()) return FinishedUnary(context, ToGrpcStatus(prepared.status()));
  auto* reactor = new BatchReactor(context, prepared->model, response->mutable_results());
  reactor->Start(std::vector<std::string>(request->prompts().begin(), request->prompts().end()),
                 prepared->params);
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* InferenceServiceImpl::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateStreamRequest* request) {
  if (std::optional<grpc::Status> refusal = RequestRefusal(*request)) {
    return new FinishedStream(*refusal);
  }
  absl::StatusOr<PreparedGeneration> prepared =
      Prepare(*context, request->model(), request->sampling());
  if (!prepared.ok()) return new FinishedStream(ToGrpcStatus(prepared.status()));
  auto* reactor = new StreamReactor(context, prepared->model);
  reactor->Start(request->prompt(), prepared->params);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Chat(grpc::CallbackServerContext* context,
                                                     const v1::ChatRequest* request,
                                                     v1::ChatResponse* response) {
  if (std::optional<grpc::Status> refusal = RequestRefusal(*request)) {
    return FinishedUnary(context, *refusal);
  }
  if (absl::Status s = ValidateModelName(request->model()); !s.ok()) {
    return FinishedUnary(context, ToGrpcStatus(s));
  }
  if (request->conversations().empty()) {
    return FinishedUnary(
        context, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "conversations is empty; pass at least one conversation"));
  }
  if (request->conversations_size() > limits_.max_prompts) {
    return FinishedUnary(
        context,
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("at most ", limits_.max_prompts,
                                  " conversations per request, got ",
                                  request->conversations_size())));
  }
  absl::StatusOr<PreparedGeneration> prepared =
      Prepare(*context, request->model(), request->sampling());
  if (!prepared.ok()) return FinishedUnary(context, ToGrpcStatus(prepared.status()));
  std::vector<std::string> prompts;
  for (int i = 0; i < request->conversations_size(); ++i) {
    absl::StatusOr<ChatPrompt> prompt =
        RenderConversation(*prepared->model, request->conversations(i).messages(),
                           !request->has_add_generation_prompt() ||
                               request->add_generation_prompt());
    if (!prompt.ok()) {
      return FinishedUnary(context, ToGrpcStatus(absl::Status(
                                        prompt.status().code(),
                                        absl::StrCat("conversation ", i, ": ",
                                                     prompt.status().message()))));
    }
    // One GenerationParams serves the whole batch.
    if (i > 0 && prompt->add_bos != prepared->params.add_bos) {
      return FinishedUnary(
          context, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                absl::StrCat("conversation ", i,
                                             " renders with a different BOS than "
                                             "conversation 0; send them in separate requests")));
    }
    prepared->params.add_bos = prompt->add_bos;
    prompts.push_back(std::move(prompt->text));
  }
  auto* reactor = new BatchReactor(context, prepared->model, response->mutable_results());
  reactor->Start(prompts, prepared->params);
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* InferenceServiceImpl::ChatStream(
    grpc::CallbackServerContext* context, const v1::ChatStreamRequest* request) {
  if (std::optional<grpc::Status> refusal = RequestRefusal(*request)) {
    return new FinishedStream(*refusal);
  }
  absl::StatusOr<PreparedGeneration> prepared =
      Prepare(*context, request->model(), request->sampling());
  if (!prepared.ok()) return new FinishedStream(ToGrpcStatus(prepared.status()));
  absl::StatusOr<ChatPrompt> prompt = RenderConversation(
      *prepared->model, request->messages(),
      !request->has_add_generation_prompt() || request->add_generation_prompt());
  if (!prompt.ok()) return new FinishedStream(ToGrpcStatus(prompt.status()));
  prepared->params.add_bos = prompt->add_bos;
  auto* reactor = new StreamReactor(context, prepared->model);
  reactor->Start(prompt->text, prepared->params);
  return reactor;
}

grpc::Status InferenceServiceImpl::Tokenize(grpc::ServerContext*,
                                            const v1::TokenizeRequest* request,
                                            v1::TokenizeResponse* response) {
  if (absl::Status s = ValidateModelName(request->model()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  absl::StatusOr<std::shared_ptr<LoadedModel>> model = models_->Get(request->model());
  if (!model.ok()) return ToGrpcStatus(model.status());
  absl::StatusOr<std::vector<int>> ids = (*model)->tokenizer->Encode(
      request->text(), !request->has_add_special_tokens() || request->add_special_tokens());
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  response->mutable_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::Detokenize(grpc::ServerContext*,
                                              const v1::DetokenizeRequest* request,
                                              v1::DetokenizeResponse* response) {
  if (absl::Status s = ValidateModelName(request->model()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  absl::StatusOr<std::shared_ptr<LoadedModel>> model = models_->Get(request->model());
  if (!model.ok()) return ToGrpcStatus(model.status());
  absl::StatusOr<std::string> text =
      DetokenizeIds(**model, request->ids(),
                    !request->has_skip_special_tokens() || request->skip_special_tokens());
  if (!text.ok()) return ToGrpcStatus(text.status());
  response->set_text(*std::move(text));
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::ListModels(grpc::ServerContext*,
                                              const v1::ListModelsRequest*,
                                              v1::ListModelsResponse* response) {
  for (v1::ModelInfo& info : models_->Loaded()) *response->add_loaded() = std::move(info);
  for (std::string& name : models_->Available()) response->add_available(std::move(name));
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::LoadModel(grpc::ServerContext*,
                                             const v1::LoadModelRequest* request,
                                             v1::ModelInfo* response) {
  if (absl::Status s = ValidateModelName(request->model()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  absl::StatusOr<v1::ModelInfo> info = models_->Load(request->model());
  if (!info.ok()) return ToGrpcStatus(info.status());
  *response = *std::move(info);
  return grpc::Status::OK;
}

grpc::Status InferenceServiceImpl::UnloadModel(grpc::ServerContext*,
                                               const v1::UnloadModelRequest* request,
                                               v1::UnloadModelResponse*) {
  if (absl::Status s = ValidateModelName(request->model()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  return ToGrpcStatus(models_->Unload(request->model()));
}

grpc::Status InferenceServiceImpl::GetServerInfo(grpc::ServerContext*,
                                                 const v1::GetServerInfoRequest*,
                                                 v1::ServerInfo* response) {
  response->set_version("wq 0.1.0");
  response->set_kernel_isa(std::string(KernelIsaName()));
  response->set_threads(limits_.threads);
  response->set_max_batch(limits_.max_running);
  response->set_max_new_tokens_cap(limits_.max_new_tokens_cap);
  return grpc::Status::OK;
}

}  // namespace wq
