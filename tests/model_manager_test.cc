// ModelManager without gRPC: unloading a model that is serving requests; the
// chat template read at load, the BOS of rendered conversations and the
// template's end-of-turn token.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "inference_service/model_manager.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

constexpr absl::Duration kPrompt = absl::Seconds(10);

struct Request {
  absl::Notification done;
  GenerationResult result;

  GenerationCallbacks Callbacks() {
    return {nullptr, [this](const GenerationResult& r) {
              result = r;
              done.Notify();
            }};
  }
};

// Requests submitted before, during and after the unload all end with the
// unload's own UNAVAILABLE, none left waiting.
TEST(ModelManagerTest, UnloadFailsEveryRequestOfTheModel) {
  const std::string artifacts = testing::TempDir() + "/model_manager_artifacts";
  std::filesystem::remove_all(artifacts);
  ModelManager::Options options;
  // Runfiles are absolute links, which roots refuse: the root is where they lead.
  options.model_root =
      std::filesystem::canonical("testdata/models/stories260K/config.json").parent_path().parent_path();
  options.artifact_root = artifacts;
  options.scheduler.max_running = 1;
  options.scheduler.max_queued = 4;
  auto manager = ModelManager::Create(options);
  ASSERT_TRUE(manager.ok()) << manager.status();
  ASSERT_TRUE((*manager)->Load("stories260K").ok());
  auto model = (*manager)->Get("stories260K");
  ASSERT_TRUE(model.ok()) << model.status();
  GenerationScheduler& scheduler = *(*model)->scheduler;

  GenerationParams params;
  params.sampling.temperature = 0;
  params.max_new_tokens = 8;
  // The first request holds the loop in its first token until the unload
  // has begun, so that it and those behind it are in flight.
  absl::Notification started, opened;
  std::vector<std::unique_ptr<Request>> accepted;
  accepted.push_back(std::make_unique<Request>());
  GenerationCallbacks gated = accepted[0]->Callbacks();
  gated.on_token = [&](const TokenEvent&) {
    if (!started.HasBeenNotified()) started.Notify();
    opened.WaitForNotification();
  };
  ASSERT_TRUE(scheduler.Submit("Once upon a time", params, std::move(gated)).ok());
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(kPrompt));
  accepted.push_back(std::make_unique<Request>());
  ASSERT_TRUE(scheduler.Submit("Once upon a time", params, accepted[1]->Callbacks()).ok());

  // Submits racing with the unload are accepted (and must end) or refused.
  std::thread unloader([&] { EXPECT_TRUE((*manager)->Unload("stories260K").ok()); });
  absl::Status refused;
  for (int i = 0; i < 10000; ++i) {
    auto request = std::make_unique<Request>();
    auto handle = scheduler.Submit("Once upon a time", params, request->Callbacks());
    if (handle.ok()) {
      accepted.push_back(std::move(request));
    } else if (!absl::IsResourceExhausted(handle.status())) {
      refused = handle.status();
      break;
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  const absl::Status unloaded = absl::UnavailableError("model \"stories260K\" was unloaded");
  EXPECT_EQ(refused, unloaded);
  opened.Notify();
  unloader.join();

  for (auto& r : accepted) {
    ASSERT_TRUE(r->done.WaitForNotificationWithTimeout(kPrompt));
    EXPECT_EQ(r->result.finish_reason, FinishReason::kError);
    EXPECT_EQ(r->result.status, unloaded);
  }
  EXPECT_EQ((*manager)->Get("stories260K").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A model root holding stories260K (SentencePiece, BOS "<s>") with
// `tokenizer_config` in place of its own, and a manager over it.
std::unique_ptr<ModelManager> ManagerWithConfig(const std::string& name,
                                                const std::string& tokenizer_config) {
  const std::string root = testing::TempDir() + "/" + name;
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root);
  std::filesystem::copy("testdata/models/stories260K", root + "/stories260K",
                        std::filesystem::copy_options::recursive);
  const std::string config = root + "/stories260K/tokenizer_config.json";
  std::filesystem::remove(config);
  std::ofstream(config) << tokenizer_config;
  ModelManager::Options options;
  options.model_root = root;
  options.artifact_root = root + "_artifacts";
  auto manager = ModelManager::Create(options);
  EXPECT_TRUE(manager.ok()) << manager.status();
  return manager.ok() ? *std::move(manager) : nullptr;
}

absl::StatusOr<ChatPrompt> Render(const std::string& name, const nlohmann::json& config) {
  std::unique_ptr<ModelManager> manager = ManagerWithConfig(name, config.dump());
  if (manager == nullptr) return absl::InternalError("no manager");
  if (absl::StatusOr<v1::ModelInfo> info = manager->Load("stories260K"); !info.ok()) {
    return info.status();
  }
  absl::StatusOr<std::shared_ptr<LoadedModel>> model = manager->Get("stories260K");
  if (!model.ok()) return model.status();
  return RenderChat(**model, {{"user", "hi"}}, /*add_generation_prompt=*/true);
}

constexpr char kTemplate[] =
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}";

TEST(ModelManagerTest, TemplateWithoutBosGetsTheTokenizers) {
  absl::StatusOr<ChatPrompt> prompt =
      Render("chat_plain", {{"bos_token", "<s>"}, {"chat_template", kTemplate}});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(prompt->text, "[user]hi[assistant]");
  EXPECT_TRUE(prompt->add_bos);
}

// SentencePiece would read "<s>" in text as characters: it becomes the id.
TEST(ModelManagerTest, TemplateBosOfTheTokenizerBecomesItsId) {
  absl::StatusOr<ChatPrompt> prompt = Render(
      "chat_bos", {{"bos_token", {{"content", "<s>"}, {"special", true}}},
                   {"chat_template", std::string("{{ bos_token }}") + kTemplate}});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(prompt->text, "[user]hi[assistant]");
  EXPECT_TRUE(prompt->add_bos);
}

// A BOS the tokenizer does not add as its own stays text, with no prefix.
TEST(ModelManagerTest, TemplateBosForeignToTheTokenizerStaysText) {
  absl::StatusOr<ChatPrompt> prompt =
      Render("chat_foreign_bos", {{"bos_token", "[BOS]"},
                                  {"chat_template", std::string("{{ bos_token }}") + kTemplate}});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(prompt->text, "[BOS][user]hi[assistant]");
  EXPECT_FALSE(prompt->add_bos);
}

TEST(ModelManagerTest, NoChatTemplateIsFailedPrecondition) {
  absl::StatusOr<ChatPrompt> prompt = Render("chat_none", {{"bos_token", "<s>"}});
  EXPECT_EQ(prompt.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(prompt.status().message().rfind("model stories260K has no chat template", 0), 0u)
      << prompt.status();
}

TEST(ModelManagerTest, MalformedTokenizerConfigFailsLoad) {
  std::unique_ptr<ModelManager> manager = ManagerWithConfig("chat_malformed", "{\"chat");
  ASSERT_NE(manager, nullptr);
  absl::StatusOr<v1::ModelInfo> info = manager->Load("stories260K");
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(info.status().message().find("tokenizer_config.json"), std::string::npos)
      << info.status();
}

// A model (tokenizer and chat template) from a ../shared/tokenizers family.
LoadedModel TokenizerFamily(const std::string& family, const std::string& config_name) {
  LoadedModel model;
  // Runfiles are links, which rooted reads refuse: where they lead.
  const std::string dir = std::filesystem::canonical("../shared/tokenizers/" + family).string();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::LoadModelDir(dir);
  EXPECT_TRUE(tokenizer.ok()) << family << ": " << tokenizer.status();
  if (tokenizer.ok()) model.tokenizer = std::move(*tokenizer);
  std::ifstream file(dir + "/" + config_name);
  const nlohmann::json config = nlohmann::json::parse(file);
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplateFromTokenizerConfig(config, "");
  EXPECT_TRUE(chat_template.ok()) << family << ": " << chat_template.status();
  if (chat_template.ok()) model.chat_template = *std::move(chat_template);
  for (auto [key, token] : {std::pair{"bos_token", &model.bos_token},
                             std::pair{"eos_token", &model.eos_token}}) {
    if (config.contains(key) && config[key].is_string()) *token = config[key].get<std::string>();
  }
  return model;
}

// Chat stops on the token that ends an assistant turn in the template, also
// where neither config.json nor the tokenizer's EOS names it (Llama 3's
// first instruct release: eos <|end_of_text|>, turns end with <|eot_id|>).
TEST(ModelManagerTest, TemplateEndOfTurnIsTheSpecialTokenAfterAnAnswer) {
  EXPECT_EQ(TemplateEndOfTurnId(TokenizerFamily("llama3", "tokenizer_config.json")), 128009);
  EXPECT_EQ(TemplateEndOfTurnId(TokenizerFamily("qwen2", "tokenizer_config.json")), 151645);
  EXPECT_EQ(TemplateEndOfTurnId(TokenizerFamily("phi3-mini", "tokenizer_config.json")), 32007);
  // A template that ends turns in plain text names no id.
  LoadedModel plain = TokenizerFamily("qwen2", "tokenizer_config.json");
  plain.chat_template = *ChatTemplate::Parse(kTemplate);
  EXPECT_EQ(TemplateEndOfTurnId(plain), std::nullopt);
}

}  // namespace
}  // namespace wq
