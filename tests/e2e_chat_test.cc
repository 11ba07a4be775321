// End-to-end tests of InferenceService's Chat, ChatStream, Tokenize and
// Detokenize (servers: e2e_test.cc), over copies of tiny-qwen3 that each
// test gives its own tokenizer_config.json.
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "wq/v1/inference.grpc.pb.h"
#include "tests/e2e_client.h"
#include "tests/e2e_support.h"

namespace wq::e2e {
namespace {

constexpr char kTemplate[] =
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}";

std::unique_ptr<v1::InferenceService::Stub> Main() { return InferenceStub(GetServers().inference); }

// A copy of tiny-qwen3 named `name` under the servers' model root, with
// `chat_template` (and tiny-qwen3's BOS and EOS) in its tokenizer_config.json;
// none without one.
void MakeModel(const std::string& name, std::optional<std::string> chat_template) {
  const std::string dir = GetServers().model_root + "/" + name;
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model"}) {
    std::filesystem::copy_file(std::string("../shared/models/tiny-qwen3/") + file,
                               dir + "/" + file,
                               std::filesystem::copy_options::overwrite_existing);
  }
  if (!chat_template.has_value()) return;
  const nlohmann::json config = {
      {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", *chat_template}};
  std::ofstream(dir + "/tokenizer_config.json") << config.dump();
}

grpc::Status Load(const std::string& model) { return LoadModel(*Main(), model); }

void LoadChatModel(const std::string& name, const std::string& chat_template) {
  MakeModel(name, chat_template);
  grpc::Status status = Load(name);
  ASSERT_TRUE(status.ok()) << status.error_message();
}

v1::SamplingParams Greedy(int max_new_tokens) { return GreedySampling(max_new_tokens); }

v1::Conversation UserConversation(const std::string& text) {
  v1::Conversation conversation;
  *conversation.mutable_messages() = UserSays(text);
  return conversation;
}

grpc::Status Chat(const std::string& model, const std::vector<v1::Conversation>& conversations,
                  v1::ChatResponse* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ChatRequest request;
  request.set_model(model);
  for (const v1::Conversation& c : conversations) *request.add_conversations() = c;
  *request.mutable_sampling() = Greedy(12);
  return Main()->Chat(&context, request, response);
}

grpc::Status Generate(const std::string& model, const std::vector<std::string>& prompts,
                      v1::GenerateResponse* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model(model);
  for (const std::string& p : prompts) request.add_prompts(p);
  *request.mutable_sampling() = Greedy(12);
  return Main()->Generate(&context, request, response);
}

TEST(E2eChatTest, ChatStreamStreamsTokensThenEnds) {
  LoadChatModel("chat-stream", kTemplate);
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ChatStreamRequest request;
  request.set_model("chat-stream");
  *request.mutable_messages() = UserSays("Once upon a time");
  *request.mutable_sampling() = Greedy(12);
  auto reader = Main()->ChatStream(&context, request);
  const StreamedGeneration stream = ReadStream(*reader);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_TRUE(stream.end.has_value());
  EXPECT_EQ(stream.after_end, 0);
  EXPECT_GT(stream.tokens, 0);
  EXPECT_TRUE(stream.end->finish_reason() == v1::LENGTH ||
              stream.end->finish_reason() == v1::EOS);
  EXPECT_EQ(stream.end->text(), stream.text);
  EXPECT_EQ(stream.end->usage().completion_tokens(), stream.tokens);
}

// Chat is Generate on the rendered text: same ids, text and prompt length.
TEST(E2eChatTest, ChatMatchesGenerateOnRenderedPrompt) {
  LoadChatModel("chat-batch", kTemplate);
  v1::Conversation with_system;
  v1::ChatMessage* system = with_system.add_messages();
  system->set_role("system");
  system->set_content("Be brief.");
  *with_system.add_messages() = UserSays("The cat")[0];
  v1::ChatResponse chat;
  grpc::Status status =
      Chat("chat-batch", {UserConversation("Once upon a time"), with_system}, &chat);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::GenerateResponse generated;
  status = Generate("chat-batch",
                    {"<|user|>Once upon a time<|assistant|>",
                     "<|system|>Be brief.<|user|>The cat<|assistant|>"},
                    &generated);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(chat.results_size(), 2);
  ASSERT_EQ(generated.results_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(chat.results(i).text(), generated.results(i).text()) << i;
    EXPECT_EQ(chat.results(i).token_ids_size(), generated.results(i).token_ids_size()) << i;
    EXPECT_EQ(chat.results(i).usage().prompt_tokens(),
              generated.results(i).usage().prompt_tokens())
        << i;
  }
}

// A template that emits the BOS itself gets it once, as its id: the same
// prompt as Generate's, which adds the BOS.
TEST(E2eChatTest, TemplateBosIsNotDoubled) {
  LoadChatModel("chat-bos", std::string("{{ bos_token }}") + kTemplate);
  v1::ChatResponse chat;
  grpc::Status status = Chat("chat-bos", {UserConversation("One day")}, &chat);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::GenerateResponse generated;
  status = Generate("chat-bos", {"<|user|>One day<|assistant|>"}, &generated);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(chat.results_size(), 1);
  EXPECT_EQ(chat.results(0).usage().prompt_tokens(),
            generated.results(0).usage().prompt_tokens());
  EXPECT_EQ(chat.results(0).text(), generated.results(0).text());
}

TEST(E2eChatTest, ModelWithoutTemplateIsFailedPrecondition) {
  MakeModel("chat-none", std::nullopt);
  grpc::Status status = Load("chat-none");
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::ChatResponse chat;
  status = Chat("chat-none", {UserConversation("hi")}, &chat);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("model chat-none has no chat template"),
            std::string::npos)
      << status.error_message();

  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ChatStreamRequest request;
  request.set_model("chat-none");
  *request.mutable_messages() = UserSays("hi");
  auto reader = Main()->ChatStream(&context, request);
  v1::GenerateStreamResponse event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(E2eChatTest, UnknownTagFailsLoadNamingIt) {
  MakeModel("chat-bad", "{% frobnicate %}{{ messages }}");
  grpc::Status status = Load("chat-bad");
  EXPECT_TRUE(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
              status.error_code() == grpc::StatusCode::UNIMPLEMENTED)
      << status.error_code();
  EXPECT_NE(status.error_message().find("frobnicate"), std::string::npos)
      << status.error_message();
}

// Newer transformers save the template as chat_template.jinja beside the
// tokenizer files; it wins over tokenizer_config.json's, as there.
TEST(E2eChatTest, ChatTemplateJinjaFileWinsOverTheConfig) {
  MakeModel("chat-jinja", "{{ raise_exception('the config template must not be used') }}");
  std::ofstream(GetServers().model_root + "/chat-jinja/chat_template.jinja") << kTemplate;
  ASSERT_TRUE(Load("chat-jinja").ok());
  LoadChatModel("chat-config", kTemplate);
  v1::ChatResponse from_jinja, from_config;
  grpc::Status status = Chat("chat-jinja", {UserConversation("Once upon a time")}, &from_jinja);
  ASSERT_TRUE(status.ok()) << status.error_message();
  status = Chat("chat-config", {UserConversation("Once upon a time")}, &from_config);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(from_jinja.results_size(), 1);
  EXPECT_EQ(from_jinja.results(0).text(), from_config.results(0).text());
  EXPECT_EQ(from_jinja.results(0).usage().prompt_tokens(),
            from_config.results(0).usage().prompt_tokens());

  // A broken chat_template.jinja fails the load, naming the file.
  MakeModel("chat-jinja-bad", std::nullopt);
  std::ofstream(GetServers().model_root + "/chat-jinja-bad/chat_template.jinja")
      << "{% frobnicate %}";
  status = Load("chat-jinja-bad");
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.error_message().find("chat_template.jinja"), std::string::npos)
      << status.error_message();
}

TEST(E2eChatTest, TokenizeDetokenizeRoundTrip) {
  LoadChatModel("chat-tokens", kTemplate);
  auto tokenize = [](std::optional<bool> add_special_tokens) {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::TokenizeRequest request;
    request.set_model("chat-tokens");
    request.set_text("Once upon a time");
    if (add_special_tokens.has_value()) request.set_add_special_tokens(*add_special_tokens);
    v1::TokenizeResponse response;
    grpc::Status status = Main()->Tokenize(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return std::vector<int>(response.ids().begin(), response.ids().end());
  };
  auto detokenize = [](const std::vector<int>& ids, std::optional<bool> skip_special,
                       std::string* text) {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::DetokenizeRequest request;
    request.set_model("chat-tokens");
    for (int id : ids) request.add_ids(id);
    if (skip_special.has_value()) request.set_skip_special_tokens(*skip_special);
    v1::DetokenizeResponse response;
    grpc::Status status = Main()->Detokenize(&context, request, &response);
    *text = response.text();
    return status;
  };
  const std::vector<int> with_bos = tokenize(std::nullopt);
  const std::vector<int> plain = tokenize(false);
  ASSERT_FALSE(plain.empty());
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], 1);  // tiny-qwen3's <s>

  std::string text;
  ASSERT_TRUE(detokenize(with_bos, std::nullopt, &text).ok());
  EXPECT_EQ(text, "Once upon a time");
  ASSERT_TRUE(detokenize(with_bos, false, &text).ok());
  EXPECT_EQ(text, "<s>Once upon a time");
  grpc::Status status = detokenize({1, 100000}, std::nullopt, &text);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("ids[1]"), std::string::npos) << status.error_message();
}

}  // namespace
}  // namespace wq::e2e
