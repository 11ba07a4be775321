#include "inference_service/model_manager.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/io/logging.h"
#include "common/kernels/matmul.h"
#include "common/io/metrics.h"
#include "common/formats/quant_config.h"
#include "common/io/status_macros.h"

namespace wq {
namespace {

// A special token of tokenizer_config.json: a string or an AddedToken object.
std::optional<std::string> TokenString(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

// Reads dir/tokenizer_config.json (BOS, EOS, chat template) and
// dir/chat_template.jinja, when there are, into `loaded`. Newer transformers
// save the template in chat_template.jinja, which, as there, wins over the
// config's.
absl::Status LoadChatTemplate(const std::string& name, const RootedPath& dir,
                              LoadedModel& loaded) {
  auto failed = [&name](const std::string& path, const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat("model \"", name, "\": chat template of ",
                                                    path, ": ", status.message()));
  };
  const RootedPath jinja = dir.Child("chat_template.jinja");
  absl::StatusOr<std::string> jinja_text = ReadFile(jinja);
  if (!jinja_text.ok() && !absl::IsNotFound(jinja_text.status())) return jinja_text.status();
  if (jinja_text.ok()) {
    absl::StatusOr<ChatTemplate> parsed = ChatTemplate::Parse(*jinja_text);
    if (!parsed.ok()) return failed(jinja.path, parsed.status());
    loaded.chat_template = *std::move(parsed);
  }

  const RootedPath file = dir.Child("tokenizer_config.json");
  const std::string path = file.path;
  absl::StatusOr<std::string> read = ReadFile(file);
  if (absl::IsNotFound(read.status())) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, std::move(read));
  nlohmann::json config = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model \"", name, "\": ", path, " is not a JSON object; fix or remove it"));
  }
  loaded.bos_token = TokenString(config, "bos_token");
  loaded.eos_token = TokenString(config, "eos_token");
  if (loaded.chat_template.has_value()) return absl::OkStatus();
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplateFromTokenizerConfig(config, "");
  if (absl::IsNotFound(chat_template.status())) return absl::OkStatus();
  if (!chat_template.ok()) return failed(path, chat_template.status());
  loaded.chat_template = *std::move(chat_template);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ChatPrompt> RenderChat(const LoadedModel& model,
                                      std::vector<ChatMessage> messages,
                                      bool add_generation_prompt) {
  if (!model.chat_template.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model.info.model(),
        " has no chat template (no chat_template.jinja, no chat_template in its "
        "tokenizer_config.json); "
        "use Generate with a formatted prompt"));
  }
  ChatRenderInput input;
  input.messages = std::move(messages);
  input.add_generation_prompt = add_generation_prompt;
  input.bos_token = model.bos_token;
  input.eos_token = model.eos_token;
  ChatPrompt prompt;
  ASSIGN_OR_RETURN(prompt.text, model.chat_template->Render(input));
  const std::string& bos = model.bos_token.value_or("");
  if (bos.empty() || !absl::StartsWith(prompt.text, bos)) return prompt;
  const Tokenizer& tok = *model.tokenizer;
  if (tok.bos_id() >= 0 && tok.Piece(tok.bos_id()) == std::string_view(bos)) {
    prompt.text.erase(0, bos.size());
  } else {
    prompt.add_bos = false;
  }
  return prompt;
}

std::optional<int> TemplateEndOfTurnId(const LoadedModel& model) {
  if (!model.chat_template.has_value() || model.tokenizer == nullptr) return std::nullopt;
  constexpr char kAnswer[] = "wq end-of-turn probe";
  ChatRenderInput input;
  input.messages = {{"user", "Hello"}, {"assistant", kAnswer}};
  input.bos_token = model.bos_token;
  input.eos_token = model.eos_token;
  absl::StatusOr<std::string> text = model.chat_template->Render(input);
  if (!text.ok()) return std::nullopt;
  const size_t answer = text->rfind(kAnswer);
  if (answer == std::string::npos) return std::nullopt;
  const Tokenizer& tok = *model.tokenizer;
  absl::StatusOr<std::vector<int>> after =
      tok.Encode(std::string_view(*text).substr(answer + sizeof(kAnswer) - 1), false);
  if (!after.ok() || after->empty() || tok.Kind(after->front()) != Tokenizer::PieceKind::kControl) {
    return std::nullopt;
  }
  return after->front();
}

absl::StatusOr<std::unique_ptr<ModelManager>> ModelManager::Create(Options options) {
  ASSIGN_OR_RETURN(std::unique_ptr<ArtifactStore> store,
                   ArtifactStore::Open(options.artifact_root));
  return std::unique_ptr<ModelManager>(
      new ModelManager(std::move(options), std::move(store)));
}

ModelManager::ModelManager(Options options, std::unique_ptr<ArtifactStore> store)
    : options_(std::move(options)),
      store_(std::move(store)),
      registry_(options_.model_root) {
  loaded_collector_ =
      MetricsRegistry::Default()
          .AddScrapedGauge("wq:models_loaded", "Models loaded for generation.")
          .AddCollector([this](const ScrapedGaugeFamily::Emit& emit) {
            absl::MutexLock lock(&mu_);
            emit({}, static_cast<double>(loaded_.size()));
          });
}

ModelManager::~ModelManager() { Shutdown(); }

std::map<std::string, std::shared_ptr<LoadedModel>> ModelManager::Stop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  return loaded_;
}

// Both outside mu_: the schedulers' callbacks must not be blocked behind us.
void ModelManager::Shutdown() {
  for (auto& [name, model] : Stop()) model->scheduler->Shutdown();
}

bool ModelManager::Drain(absl::Duration grace) {
  const absl::Time deadline = absl::Now() + grace;
  bool drained = true;
  for (auto& [name, model] : Stop()) {
    if (model->scheduler->Drain(deadline)) continue;
    drained = false;
    LogWarning("drain_incomplete", {{"model", name},
                                    {"running", model->scheduler->running()},
                                    {"queued", model->scheduler->queued()}});
    model->scheduler->Shutdown(absl::UnavailableError(
        "the server shut down before the request finished (shutdown grace period over); "
        "retry"));
  }
  Shutdown();
  return drained;
}

std::vector<std::string> ModelManager::Available() const {
  std::vector<std::string> names;
  for (const v1::ArtifactManifest& manifest : store_->List()) {
    names.push_back(manifest.artifact_id());
  }
  absl::StatusOr<std::vector<std::string>> models = registry_.List();
  if (models.ok()) names.insert(names.end(), models->begin(), models->end());
  return names;
}

bool ModelManager::IsKnown(const std::string& name) const {
  return store_->Exists(name) || registry_.Resolve(name).ok();
}

absl::Status ModelManager::UnknownModel(const std::string& name) const {
  const std::vector<std::string> available = Available();
  return absl::NotFoundError(absl::StrCat(
      "unknown model \"", name, "\": not an artifact id nor a model id; available: ",
      available.empty() ? "(none)" : absl::StrJoin(available, ", ")));
}

absl::StatusOr<v1::ModelInfo> ModelManager::Load(const std::string& name) {
  absl::MutexLock load_lock(&load_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("server is shutting down");
    auto it = loaded_.find(name);
    if (it != loaded_.end()) return it->second->info;
  }
  RETURN_IF_ERROR(ValidateResourceId(name, "model", 2));

  auto loaded = std::make_shared<LoadedModel>();
  v1::ModelInfo& info = loaded->info;
  info.set_model(name);
  std::shared_ptr<const LlamaWeights> weights;
  RootedPath tokenizer_dir;
  if (store_->Exists(name)) {
    ASSIGN_OR_RETURN(v1::ArtifactManifest manifest, store_->ReadManifest(name));
    ASSIGN_OR_RETURN(weights, store_->LoadWeights(name, options_.load));
    info.set_quantized(true);
    info.set_source_model_id(manifest.source_model_id());
    *info.mutable_config() = manifest.config();
    if (options_.load.compute) {
      // What the kernels do, which for formats int8 cannot represent (asym
      // codebooks) is fp32 whatever was asked.
      ComputeDtype used = *options_.load.compute;
      std::vector<const LinearWeight*> linears = {&weights->lm_head};
      for (const LinearWeight& l : weights->layers[0].linear) linears.push_back(&l);
      for (const LinearWeight* l : linears) {
        if (l->out_features() == 0 || !l->quantized()) continue;
        used = EffectiveCompute(l->quantized_view(), l->compute_dtype());
        break;
      }
      info.mutable_config()->set_compute_dtype(ProtoComputeDtype(used));
    }
    info.set_bits_per_weight(manifest.bits_per_weight());
    tokenizer_dir = store_->ArtifactPath(name);
  } else {
    absl::StatusOr<std::string> resolved = registry_.Resolve(name);
    if (absl::IsNotFound(resolved.status())) return UnknownModel(name);
    if (!resolved.ok()) return resolved.status();
    // Files are opened beneath the model root, not through the real path;
    // copied, as artifacts are, so that a truncated file cannot SIGBUS us.
    // bf16 and f16 matrices are served from that copy as stored.
    const RootedPath dir(registry_.root(), name);
    ASSIGN_OR_RETURN(weights,
                     LoadLlamaModelDir(dir, FileBacking::kCopied, HalfWeights::kServeAsStored));
    info.set_quantized(false);
    info.set_source_model_id(name);
    info.set_bits_per_weight(weights->embed.dense() == nullptr ? 16 : 32);
    tokenizer_dir = dir;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::LoadModelDir(tokenizer_dir);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat("model \"", name, "\" has no usable tokenizer: ",
                                     tokenizer.status().message()));
  }
  loaded->tokenizer = std::shared_ptr<const Tokenizer>(std::move(*tokenizer));
  RETURN_IF_ERROR(LoadChatTemplate(name, tokenizer_dir, *loaded));
  loaded->model = std::make_shared<const LlamaModel>(weights);
  GenerationScheduler::Options scheduler_options = options_.scheduler;
  scheduler_options.model_name = name;
  if (std::optional<int> end_of_turn = TemplateEndOfTurnId(*loaded); end_of_turn.has_value()) {
    scheduler_options.end_ids.push_back(*end_of_turn);
  }
  loaded->scheduler = std::make_unique<GenerationScheduler>(
      loaded->model, loaded->tokenizer, scheduler_options);
  info.set_weight_bytes(weights->StorageBytes());
  info.set_vocab_size(weights->config.vocab_size);
  info.set_max_context(loaded->scheduler->max_context());

  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("server is shutting down");
  loaded_[name] = loaded;
  LogInfo("model_loaded", {{"model", name},
                           {"quantized", info.quantized()},
                           {"weight_bytes", info.weight_bytes()},
                           {"max_context", info.max_context()},
                           {"chat_template", loaded->chat_template.has_value()}});
  return info;
}

absl::Status ModelManager::Unload(const std::string& name) {
  std::shared_ptr<LoadedModel> model;
  {
    absl::MutexLock lock(&mu_);
    auto it = loaded_.find(name);
    if (it == loaded_.end()) {
      return absl::NotFoundError(absl::StrCat("model \"", name, "\" is not loaded"));
    }
    model = std::move(it->second);
    loaded_.erase(it);
  }
  // Requests still running or waiting fail with this, as do Submits of
  // handlers that got `model` before it left loaded_ (they hold it).
  model->scheduler->Shutdown(absl::UnavailableError(
      absl::StrCat("model \"", name, "\" was unloaded")));
  LogInfo("model_unloaded", {{"model", name}});
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<LoadedModel>> ModelManager::Get(
    const std::string& name) const {
  {
    absl::MutexLock lock(&mu_);
    auto it = loaded_.find(name);
    if (it != loaded_.end()) return it->second;
  }
  RETURN_IF_ERROR(ValidateResourceId(name, "model", 2));
  if (IsKnown(name)) {
    return absl::FailedPreconditionError(
        absl::StrCat("model \"", name, "\" is not loaded; call LoadModel first"));
  }
  return UnknownModel(name);
}

std::vector<v1::ModelInfo> ModelManager::Loaded() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::ModelInfo> infos;
  for (const auto& [name, model] : loaded_) infos.push_back(model->info);
  return infos;
}

}  // namespace wq
