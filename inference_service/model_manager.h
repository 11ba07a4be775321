// Models the inference service can serve, and those it has loaded. A model
// name is either an artifact id (quantized, from the artifact store) or a
// model id under the model root (served unquantized in fp32). Each loaded
// model owns its weights, tokenizer and GenerationScheduler. No gRPC here.
#ifndef WQ_INFERENCE_SERVICE_MODEL_MANAGER_H_
#define WQ_INFERENCE_SERVICE_MODEL_MANAGER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/artifact/artifact_store.h"
#include "common/tokenizer/chat_template.h"
#include "common/model/llama.h"
#include "common/artifact/model_registry.h"
#include "common/serving/scheduler.h"
#include "common/tokenizer/tokenizer.h"
#include "wq/v1/inference.pb.h"

namespace wq {

struct LoadedModel {
  v1::ModelInfo info;
  std::shared_ptr<const LlamaModel> model;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::unique_ptr<GenerationScheduler> scheduler;
  // From tokenizer_config.json beside the weights; parsed at load so that a
  // template wq cannot render fails LoadModel, not the first Chat.
  std::optional<ChatTemplate> chat_template;
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
};

// A conversation rendered with the model's chat template, ready to Submit.
struct ChatPrompt {
  std::string text;
  // False when the template emitted a BOS the tokenizer would not add as its
  // own id (GenerationParams::add_bos).
  bool add_bos = true;
};

// FAILED_PRECONDITION "model X has no chat template" without one; the
// template's INVALID_ARGUMENT for conversations it rejects. A BOS the template
// emits is generated once: stripped and added as the tokenizer's id when it is
// the tokenizer's own (SentencePiece reads "<s>" in text as plain characters),
// else kept as text with no prefix added.
absl::StatusOr<ChatPrompt> RenderChat(const LoadedModel& model,
                                      std::vector<ChatMessage> messages,
                                      bool add_generation_prompt);

// The id that ends an assistant turn in the model's chat template (Llama 3's
// <|eot_id|>, ChatML's <|im_end|>, Phi-3's <|end|>): the first token the
// template writes after an assistant message, when that is a special token.
// nullopt without a template, or when the template rejects the probe
// conversation or ends turns in plain text.
std::optional<int> TemplateEndOfTurnId(const LoadedModel& model);

class ModelManager {
 public:
  struct Options {
    std::string model_root;
    std::string artifact_root;
    GenerationScheduler::Options scheduler;
    // How artifacts load: compute unset keeps each artifact's own
    // compute_dtype.
    LoadOptions load;
  };

  static absl::StatusOr<std::unique_ptr<ModelManager>> Create(Options options);
  ~ModelManager();

  // Loads the model unless it is loaded already (then returns its info).
  // NOT_FOUND listing what is available; INVALID_ARGUMENT for malformed names.
  absl::StatusOr<v1::ModelInfo> Load(const std::string& name);
  // Fails the model's running and waiting requests with UNAVAILABLE ("model
  // ... was unloaded") and frees it. NOT_FOUND if not loaded.
  absl::Status Unload(const std::string& name);
  // A loaded model; shared so that in-flight requests keep it alive past an
  // Unload. FAILED_PRECONDITION for a known model that is not loaded,
  // NOT_FOUND for an unknown one.
  absl::StatusOr<std::shared_ptr<LoadedModel>> Get(const std::string& name) const;

  std::vector<v1::ModelInfo> Loaded() const;
  // Artifact ids, then model ids.
  std::vector<std::string> Available() const;

  // Stops every scheduler (in-flight requests finish as cancelled) and
  // refuses later loads. Idempotent.
  void Shutdown();
  // The graceful form of Shutdown: refuses new loads and requests at once
  // (UNAVAILABLE "the server is shutting down"), lets running and waiting
  // requests finish within `grace`, then fails those left with UNAVAILABLE
  // (so clients retry elsewhere) and stops. True when nothing was cut short.
  bool Drain(absl::Duration grace);

 private:
  ModelManager(Options options, std::unique_ptr<ArtifactStore> store);
  absl::Status UnknownModel(const std::string& name) const;
  // Refuses later loads; the models loaded now.
  std::map<std::string, std::shared_ptr<LoadedModel>> Stop();
  bool IsKnown(const std::string& name) const;

  const Options options_;
  const std::unique_ptr<ArtifactStore> store_;
  const ModelRegistry registry_;

  absl::Mutex load_mu_;  // serialises loads: Load is idempotent, not racy
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<LoadedModel>> loaded_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // wq:models_loaded, read at scrape time; last, as it reads loaded_.
  std::shared_ptr<void> loaded_collector_;
};

}  // namespace wq

#endif  // WQ_INFERENCE_SERVICE_MODEL_MANAGER_H_
