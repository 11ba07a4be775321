// wq.v1.InferenceService over a ModelManager: validates requests, submits
// them to the model's GenerationScheduler and relays the results.
#ifndef WQ_INFERENCE_SERVICE_INFERENCE_SERVICE_H_
#define WQ_INFERENCE_SERVICE_INFERENCE_SERVICE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/model/hf_config.h"
#include "common/serving/scheduler.h"
#include "inference_service/model_manager.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq {

struct InferenceLimits {
  int max_new_tokens_cap = 2048;
  int default_max_new_tokens = 128;
  int max_prompts = 64;
  int max_stop_sequences = 8;
  int threads = 0;      // reported by GetServerInfo
  int max_running = 8;  // reported as max_batch
};

// The request with the sampling fields it leaves unset (temperature, top_k,
// top_p, repetition_penalty) taken from the model's generation_config.json.
v1::SamplingParams WithGenerationDefaults(v1::SamplingParams sampling,
                                          const GenerationDefaults& defaults);

// The request's sampling parameters checked against the limits, with
// defaults filled in and a random seed when none is given. INVALID_ARGUMENT
// naming the field otherwise.
absl::StatusOr<GenerationParams> ToGenerationParams(const v1::SamplingParams& sampling,
                                                    const InferenceLimits& limits);

// A generation request's loaded model and checked parameters: what the gRPC
// handlers and the OpenAI HTTP API (openai_api.h) both prepare, the same way.
struct PreparedGeneration {
  std::shared_ptr<LoadedModel> model;
  GenerationParams params;
};
// The sampling fields the request leaves unset take the model's
// generation_config.json defaults, else the API's own: `default_temperature`
// (gRPC's is 0, greedy; OpenAI's 1), then ToGenerationParams'.
// INVALID_ARGUMENT for an empty model name or bad sampling parameters; the
// ModelManager's NOT_FOUND / FAILED_PRECONDITION for a model not loaded.
absl::StatusOr<PreparedGeneration> PrepareGeneration(const ModelManager& models,
                                                     const InferenceLimits& limits,
                                                     const std::string& model,
                                                     const v1::SamplingParams& sampling,
                                                     absl::Time deadline,
                                                     float default_temperature = 0.0f);

// The conversation rendered with the model's chat template; INVALID_ARGUMENT
// for no messages or a role other than system, user or assistant.
absl::StatusOr<ChatPrompt> RenderConversation(
    const LoadedModel& model,
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages,
    bool add_generation_prompt);

// Token ids back to text; INVALID_ARGUMENT for an id outside the vocabulary.
// skip_special_tokens leaves out control tokens as generated text does;
// false spells them out.
absl::StatusOr<std::string> DetokenizeIds(const LoadedModel& model,
                                          absl::Span<const int> ids,
                                          bool skip_special_tokens);

// Generation runs on gRPC's callback API: the scheduler's callbacks drive the
// replies, so no thread waits on a request. The other methods are
// synchronous (LoadModel blocks on disk).
using InferenceServiceBase = v1::InferenceService::WithCallbackMethod_Generate<
    v1::InferenceService::WithCallbackMethod_GenerateStream<
        v1::InferenceService::WithCallbackMethod_Chat<
            v1::InferenceService::WithCallbackMethod_ChatStream<
                v1::InferenceService::Service>>>>;

class InferenceServiceImpl final : public InferenceServiceBase {
 public:
  InferenceServiceImpl(ModelManager* models, InferenceLimits limits)
      : models_(models), limits_(limits) {}

  // The methods InferenceServiceBase serves on the callback API, for
  // ServerOptions::Service::callback_methods.
  static std::vector<std::string> CallbackMethods() {
    return {"Generate", "GenerateStream", "Chat", "ChatStream"};
  }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateStreamRequest* request) override;
  grpc::ServerUnaryReactor* Chat(grpc::CallbackServerContext* context,
                                 const v1::ChatRequest* request,
                                 v1::ChatResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* ChatStream(
      grpc::CallbackServerContext* context, const v1::ChatStreamRequest* request) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status ListModels(grpc::ServerContext* context,
                          const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status LoadModel(grpc::ServerContext* context, const v1::LoadModelRequest* request,
                         v1::ModelInfo* response) override;
  grpc::Status UnloadModel(grpc::ServerContext* context,
                           const v1::UnloadModelRequest* request,
                           v1::UnloadModelResponse* response) override;
  grpc::Status GetServerInfo(grpc::ServerContext* context,
                             const v1::GetServerInfoRequest* request,
                             v1::ServerInfo* response) override;

 private:
  // PrepareGeneration with the RPC's deadline.
  absl::StatusOr<PreparedGeneration> Prepare(const grpc::ServerContextBase& context,
                                             const std::string& model,
                                             const v1::SamplingParams& sampling) const;

  ModelManager* models_;  // not owned
  const InferenceLimits limits_;
};

}  // namespace wq

#endif  // WQ_INFERENCE_SERVICE_INFERENCE_SERVICE_H_
