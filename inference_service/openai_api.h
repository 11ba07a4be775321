// The OpenAI-compatible HTTP API of the inference service, on the HTTP
// listener beside its gRPC port: POST /v1/completions, /v1/chat/completions,
// GET /v1/models, and vLLM's POST /tokenize and /detokenize. Requests are
// prepared as the gRPC handlers prepare theirs (PrepareGeneration) and join
// the same per-model schedulers, so gRPC and HTTP requests are batched
// together and share the same capacity. Errors are OpenAI's JSON
// ({"error": {"message", "type", "param", "code"}}) with the matching HTTP
// status; see README "OpenAI API" for the fields served and refused.
#ifndef WQ_INFERENCE_SERVICE_OPENAI_API_H_
#define WQ_INFERENCE_SERVICE_OPENAI_API_H_

#include <httplib.h>

#include "inference_service/inference_service.h"
#include "inference_service/model_manager.h"

namespace wq {

class OpenAiApi {
 public:
  // `models` is not owned and must outlive the routes.
  OpenAiApi(ModelManager* models, InferenceLimits limits)
      : models_(models), limits_(limits) {}

  // Adds the routes; the server must not outlive this object.
  void Register(httplib::Server& server) const;

 private:
  enum class Endpoint { kCompletions, kChat };
  void Generate(Endpoint endpoint, const httplib::Request& request,
                httplib::Response& response) const;
  void Tokenize(const httplib::Request& request, httplib::Response& response) const;
  void Detokenize(const httplib::Request& request, httplib::Response& response) const;

  ModelManager* models_;
  const InferenceLimits limits_;
};

}  // namespace wq

#endif  // WQ_INFERENCE_SERVICE_OPENAI_API_H_
