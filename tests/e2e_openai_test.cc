// End-to-end tests of the OpenAI-compatible HTTP API (inference_service/
// openai_api.h): inference_service binaries of their own, with
// --http_listen, over stories260K and a copy of it with a chat template,
// talked to with httplib::Client and raw sockets, checked against the gRPC
// API of the same process.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_support.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {
namespace {

using json = nlohmann::json;

constexpr char kModel[] = "stories260K";
constexpr char kChatModel[] = "openai-chat";
constexpr char kOnce[] = "Once upon a time";
// Renders a conversation as its contents run together, so that a chat about
// kOnce generates what the completion of kOnce does.
constexpr char kTemplate[] = "{% for m in messages %}{{ m.content }}{% endfor %}";

// An inference_service with the HTTP listener; its HTTP and gRPC ports.
struct Service {
  std::unique_ptr<ServerProcess> process;
  int http_port = 0;
  std::string grpc_address;
};

Service Start(const std::string& name, std::vector<std::string> args) {
  const Servers& servers = GetServers();
  const std::string http_port_file = servers.dir + "/" + name + ".http_port";
  args.insert(args.end(), {"--model_root=" + servers.model_root,
                           "--artifact_root=" + servers.artifact_root, "--threads=2",
                           "--http_listen=127.0.0.1:0", "--http_port_file=" + http_port_file});
  Service service;
  service.process = std::make_unique<ServerProcess>(name, servers.inference_binary,
                                                    std::move(args), servers.dir);
  const int grpc_port = service.process->WaitForPort(std::chrono::seconds(60));
  service.grpc_address = "127.0.0.1:" + std::to_string(grpc_port);
  // The HTTP port file is written before the gRPC one.
  std::ifstream(http_port_file) >> service.http_port;
  EXPECT_GT(service.http_port, 0) << service.process->Log();
  return service;
}

void MakeChatModel() {
  const std::string dir = GetServers().model_root + "/" + kChatModel;
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model"}) {
    std::filesystem::copy_file(GetServers().model_root + "/" + kModel + "/" + file,
                               dir + "/" + file,
                               std::filesystem::copy_options::overwrite_existing);
  }
  const json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", kTemplate}};
  std::ofstream(dir + "/tokenizer_config.json") << config.dump();
}

struct Reply {
  int status = 0;
  std::string body;
  std::string request_id;  // the x-request-id response header, if any
  json Json() const { return json::parse(body, nullptr, false); }
};

// SSE "data:" payloads, in order, [DONE] included.
std::vector<std::string> Events(const std::string& body) {
  std::vector<std::string> events;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    events.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return events;
}

class E2eOpenAiTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    MakeChatModel();
    const std::string preload = std::string("--preload=") + kModel + "," + kChatModel;
    service_ = new Service(Start("openai", {preload, "--max_running=4", "--max_queued=8",
                                            "--max_new_tokens_cap=512"}));
    // One place: a request holds it until it ends, the next one is refused.
    narrow_ = new Service(Start("openai-narrow", {std::string("--preload=") + kModel,
                                                   "--max_running=1", "--max_queued=0",
                                                   "--max_new_tokens_cap=512"}));
  }

  static void TearDownTestSuite() {
    for (Service* service : {service_, narrow_}) {
      EXPECT_EQ(service->process->Stop(std::chrono::seconds(10)), 0)
          << service->process->Log();
      delete service;
    }
  }

  static Reply Post(const std::string& path, const std::string& body,
                    const Service& service = *service_) {
    httplib::Client client("127.0.0.1", service.http_port);
    client.set_read_timeout(60, 0);
    httplib::Result result = client.Post(path.c_str(), body, "application/json");
    if (!result) {
      ADD_FAILURE() << path << ": " << httplib::to_string(result.error());
      return {};
    }
    return {result->status, result->body, result->get_header_value("x-request-id")};
  }
  static Reply Post(const std::string& path, const json& body,
                    const Service& service = *service_) {
    return Post(path, body.dump(), service);
  }

  static json Completion(json body, const Service& service = *service_) {
    body["model"] = body.value("model", kModel);
    const Reply reply = Post("/v1/completions", body, service);
    EXPECT_EQ(reply.status, 200) << reply.body;
    json parsed = reply.Json();
    // The listener's request id, when it sets one, names the completion.
    if (!reply.request_id.empty()) {
      EXPECT_EQ(parsed["id"], "cmpl-" + reply.request_id);
    }
    return parsed;
  }
  static json ChatCompletion(json body) {
    body["model"] = kChatModel;
    const Reply reply = Post("/v1/chat/completions", body);
    EXPECT_EQ(reply.status, 200) << reply.body;
    return reply.Json();
  }
  static json UserSays(const std::string& text) {
    return json::array({{{"role", "user"}, {"content", text}}});
  }

  static std::unique_ptr<v1::InferenceService::Stub> Stub(const Service& service = *service_) {
    return v1::InferenceService::NewStub(
        grpc::CreateChannel(service.grpc_address, grpc::InsecureChannelCredentials()));
  }
  static void SetDeadline(grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  }

  // The error reply's checks: status, OpenAI's error object, and its param.
  static void ExpectError(const Reply& reply, int status, const std::string& param) {
    EXPECT_EQ(reply.status, status) << reply.body;
    const json body = reply.Json();
    ASSERT_TRUE(body.contains("error")) << reply.body;
    const json& error = body["error"];
    EXPECT_TRUE(error["message"].is_string() && !error["message"].get<std::string>().empty());
    EXPECT_TRUE(error["type"].is_string());
    EXPECT_TRUE(error.contains("code"));
    if (param.empty()) {
      EXPECT_TRUE(error["param"].is_null()) << reply.body;
    } else {
      EXPECT_EQ(error["param"], param) << reply.body;
    }
  }

  static Service* service_;
  static Service* narrow_;
};

Service* E2eOpenAiTest::service_ = nullptr;
Service* E2eOpenAiTest::narrow_ = nullptr;

TEST_F(E2eOpenAiTest, ModelsListsTheLoadedModels) {
  httplib::Client client("127.0.0.1", service_->http_port);
  httplib::Result result = client.Get("/v1/models");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
  const json body = json::parse(result->body);
  EXPECT_EQ(body["object"], "list");
  std::set<std::string> ids;
  for (const json& model : body["data"]) {
    EXPECT_EQ(model["object"], "model");
    ids.insert(model["id"].get<std::string>());
  }
  EXPECT_EQ(ids, (std::set<std::string>{kModel, kChatModel}));
}

TEST_F(E2eOpenAiTest, GreedyCompletionIsGrpcGenerates) {
  const json body = Completion({{"prompt", kOnce}, {"max_tokens", 24}, {"temperature", 0}});
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], kModel);
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u) << body["id"];
  ASSERT_EQ(body["choices"].size(), 1u);
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_TRUE(choice["logprobs"].is_null());

  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.add_prompts(kOnce);
  request.mutable_sampling()->set_max_new_tokens(24);
  v1::GenerateResponse response;
  ASSERT_TRUE(Stub()->Generate(&context, request, &response).ok());
  const v1::GenerationResult& grpc = response.results(0);
  EXPECT_EQ(choice["text"], grpc.text());
  EXPECT_EQ(body["usage"]["prompt_tokens"], grpc.usage().prompt_tokens());
  EXPECT_EQ(body["usage"]["completion_tokens"], 24);
  EXPECT_EQ(body["usage"]["total_tokens"], grpc.usage().prompt_tokens() + 24);
}

TEST_F(E2eOpenAiTest, StreamedChunksAddUpToTheCompletion) {
  const json whole = Completion({{"prompt", kOnce}, {"max_tokens", 20}, {"temperature", 0}});
  const Reply reply = Post("/v1/completions",
                           json{{"model", kModel},
                                {"prompt", kOnce},
                                {"max_tokens", 20},
                                {"temperature", 0},
                                {"stream", true},
                                {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(reply.status, 200);
  const std::vector<std::string> events = Events(reply.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish_reason;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_EQ(chunk["id"], json::parse(events[0])["id"]);
    EXPECT_TRUE(chunk["usage"].is_null());  // only the last one has it
    text += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null()) {
      finish_reason = chunk["choices"][0]["finish_reason"];
    }
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
  EXPECT_EQ(finish_reason, "length");
  const json usage_chunk = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"], whole["usage"]);

  // Without stream_options there is no usage chunk.
  const Reply plain = Post("/v1/completions", json{{"model", kModel},
                                                   {"prompt", kOnce},
                                                   {"max_tokens", 5},
                                                   {"stream", true}});
  for (const std::string& event : Events(plain.body)) {
    if (event == "[DONE]") continue;
    EXPECT_FALSE(json::parse(event).contains("usage")) << event;
  }
}

TEST_F(E2eOpenAiTest, StopEndsBeforeTheStopString) {
  const std::string greedy =
      Completion({{"prompt", kOnce}, {"max_tokens", 24}, {"temperature", 0}})["choices"][0]["text"];
  const size_t lily = greedy.find(" Lily");
  ASSERT_NE(lily, std::string::npos) << greedy;
  for (const json& stop : {json(" Lily"), json::array({"zzz", " Lily"})}) {
    const json body = Completion(
        {{"prompt", kOnce}, {"max_tokens", 24}, {"temperature", 0}, {"stop", stop}});
    EXPECT_EQ(body["choices"][0]["text"], greedy.substr(0, lily)) << stop;
    EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  }
}

TEST_F(E2eOpenAiTest, SeedReproducesAndNGivesIndependentSamples) {
  const json request = {{"prompt", kOnce}, {"max_tokens", 24}, {"temperature", 1.0},
                        {"top_p", 0.95}, {"seed", 42}};
  const json first = Completion(request);
  EXPECT_EQ(Completion(request)["choices"], first["choices"]);

  json with_n = request;
  with_n["n"] = 4;
  const json body = Completion(with_n);
  ASSERT_EQ(body["choices"].size(), 4u);
  std::set<std::string> texts;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    texts.insert(body["choices"][i]["text"].get<std::string>());
  }
  EXPECT_GE(texts.size(), 3u) << body.dump();
  // The first choice is the request's seed itself.
  EXPECT_EQ(body["choices"][0]["text"], first["choices"][0]["text"]);
  // A prompt counts once, its completions each.
  EXPECT_EQ(body["usage"]["prompt_tokens"], first["usage"]["prompt_tokens"]);
  EXPECT_EQ(body["usage"]["completion_tokens"], 4 * 24);

  // Several prompts, n each: choice i is prompt i / n.
  json prompts = request;
  prompts["prompt"] = json::array({kOnce, "Lily"});
  prompts["n"] = 2;
  const json both = Completion(prompts);
  ASSERT_EQ(both["choices"].size(), 4u);
  EXPECT_EQ(both["choices"][0]["text"], first["choices"][0]["text"]);
  EXPECT_EQ(both["choices"][1]["text"], body["choices"][1]["text"]);
}

TEST_F(E2eOpenAiTest, CompletionLogprobsAreTheModelsTopAlternatives) {
  const json body =
      Completion({{"prompt", kOnce}, {"max_tokens", 10}, {"temperature", 0}, {"logprobs", 5}});
  const json& choice = body["choices"][0];
  const json& logprobs = choice["logprobs"];
  ASSERT_EQ(logprobs["tokens"].size(), 10u);
  ASSERT_EQ(logprobs["token_logprobs"].size(), 10u);
  ASSERT_EQ(logprobs["top_logprobs"].size(), 10u);
  std::string joined;
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(logprobs["text_offset"][i], joined.size());
    joined += logprobs["tokens"][i].get<std::string>();
    const double logprob = logprobs["token_logprobs"][i];
    EXPECT_LE(logprob, 0);
    const json& top = logprobs["top_logprobs"][i];
    EXPECT_GE(top.size(), 4u);  // 5, less any tokens spelled alike
    EXPECT_LE(top.size(), 5u);
    // Greedy: the chosen token is the most likely one.
    double best = -1e9;
    for (auto it = top.begin(); it != top.end(); ++it) best = std::max(best, it->get<double>());
    EXPECT_NEAR(best, logprob, 1e-6);
    EXPECT_NEAR(top[logprobs["tokens"][i].get<std::string>()].get<double>(), logprob, 1e-6);
  }
  EXPECT_EQ(joined, choice["text"]);

  // Streamed, each chunk carries its token's.
  const Reply reply = Post("/v1/completions", json{{"model", kModel}, {"prompt", kOnce},
                                                   {"max_tokens", 10}, {"temperature", 0},
                                                   {"logprobs", 5}, {"stream", true}});
  std::vector<double> streamed;
  for (const std::string& event : Events(reply.body)) {
    if (event == "[DONE]") continue;
    const json chunk = json::parse(event);
    const json& lp = chunk["choices"][0]["logprobs"];
    if (lp.is_null()) continue;  // the finish chunk
    for (const json& l : lp["token_logprobs"]) streamed.push_back(l);
  }
  EXPECT_EQ(json(streamed), logprobs["token_logprobs"]);
}

TEST_F(E2eOpenAiTest, ChatIsTheTemplatedCompletionAndGrpcChat) {
  const json body = ChatCompletion(
      {{"messages", UserSays(kOnce)}, {"max_tokens", 16}, {"temperature", 0}});
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  const json& message = body["choices"][0]["message"];
  EXPECT_EQ(message["role"], "assistant");
  // The template renders the bare content: the same prompt as a completion.
  EXPECT_EQ(message["content"],
            Completion({{"prompt", kOnce}, {"max_tokens", 16}, {"temperature", 0}})
                ["choices"][0]["text"]);

  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ChatRequest request;
  request.set_model(kChatModel);
  v1::ChatMessage* m = request.add_conversations()->add_messages();
  m->set_role("user");
  m->set_content(kOnce);
  request.mutable_sampling()->set_max_new_tokens(16);
  v1::ChatResponse response;
  ASSERT_TRUE(Stub()->Chat(&context, request, &response).ok());
  EXPECT_EQ(message["content"], response.results(0).text());

  // Text parts and max_completion_tokens, as newer clients send them.
  const json parts = ChatCompletion(
      {{"messages", json::array({{{"role", "developer"}, {"content", "Once upon"}},
                                 {{"role", "user"},
                                  {"content", json::array({{{"type", "text"}, {"text", " a time"}}})}}})},
       {"max_completion_tokens", 16},
       {"temperature", 0}});
  EXPECT_EQ(parts["choices"][0]["message"]["content"], message["content"]);
}

TEST_F(E2eOpenAiTest, ChatStreamsDeltasAndLogprobs) {
  const json whole = ChatCompletion({{"messages", UserSays(kOnce)}, {"max_tokens", 12},
                                     {"temperature", 0}, {"logprobs", true},
                                     {"top_logprobs", 20}});
  const json& content = whole["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 12u);
  for (const json& token : content) {
    EXPECT_EQ(token["top_logprobs"].size(), 20u);
    EXPECT_NEAR(token["top_logprobs"][0]["logprob"].get<double>(),
                token["logprob"].get<double>(), 1e-6);
    const std::string text = token["token"];
    EXPECT_EQ(token["bytes"].size(), text.size());
  }

  const Reply reply = Post("/v1/chat/completions",
                           json{{"model", kChatModel}, {"messages", UserSays(kOnce)},
                                {"max_tokens", 12}, {"temperature", 0}, {"stream", true},
                                {"logprobs", true}, {"top_logprobs", 2},
                                {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(reply.status, 200);
  const std::vector<std::string> events = Events(reply.body);
  ASSERT_GE(events.size(), 4u);
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  int tokens = 0;
  std::string finish_reason;
  for (size_t i = 1; i + 2 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    const json& choice = chunk["choices"][0];
    if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    if (!choice["logprobs"].is_null()) {
      tokens += choice["logprobs"]["content"].size();
      EXPECT_EQ(choice["logprobs"]["content"][0]["top_logprobs"].size(), 2u);
    }
    if (!choice["finish_reason"].is_null()) finish_reason = choice["finish_reason"];
  }
  EXPECT_EQ(text, whole["choices"][0]["message"]["content"]);
  EXPECT_EQ(tokens, 12);
  EXPECT_EQ(finish_reason, "length");
  EXPECT_EQ(json::parse(events[events.size() - 2])["usage"], whole["usage"]);
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST_F(E2eOpenAiTest, PenaltiesChangeTheTextAsOverGrpc) {
  const json greedy =
      Completion({{"prompt", kOnce}, {"max_tokens", 48}, {"temperature", 0}});
  const json penalised = Completion({{"prompt", kOnce}, {"max_tokens", 48}, {"temperature", 0},
                                     {"presence_penalty", 1.5}, {"frequency_penalty", 1.0}});
  EXPECT_NE(penalised["choices"][0]["text"], greedy["choices"][0]["text"]);

  // The same penalties through gRPC's GenerateStream give the same text.
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateStreamRequest request;
  request.set_model(kModel);
  request.set_prompt(kOnce);
  request.mutable_sampling()->set_max_new_tokens(48);
  request.mutable_sampling()->set_presence_penalty(1.5);
  request.mutable_sampling()->set_frequency_penalty(1.0);
  request.mutable_sampling()->set_top_logprobs(3);
  auto reader = Stub()->GenerateStream(&context, request);
  v1::GenerateStreamResponse event;
  std::string text;
  while (reader->Read(&event)) {
    if (event.has_token()) {
      EXPECT_EQ(event.token().top_logprobs_size(), 3);
      text += event.token().text();
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(text, penalised["choices"][0]["text"]);
}

TEST_F(E2eOpenAiTest, TokenizeAndDetokenizeRoundTrip) {
  const Reply reply = Post("/tokenize", json{{"model", kModel}, {"prompt", kOnce}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  const json tokens = reply.Json();
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::TokenizeRequest request;
  request.set_model(kModel);
  request.set_text(kOnce);
  v1::TokenizeResponse response;
  ASSERT_TRUE(Stub()->Tokenize(&context, request, &response).ok());
  EXPECT_EQ(tokens["tokens"], json(std::vector<int>(response.ids().begin(), response.ids().end())));
  EXPECT_EQ(tokens["count"], response.ids_size());
  EXPECT_EQ(tokens["max_model_len"], 512);

  const Reply text = Post("/detokenize", json{{"model", kModel}, {"tokens", tokens["tokens"]}});
  ASSERT_EQ(text.status, 200) << text.body;
  EXPECT_EQ(text.Json()["prompt"], kOnce);
  ExpectError(Post("/detokenize", json{{"model", kModel}, {"tokens", {1, 999999}}}), 400,
              "tokens");
  ExpectError(Post("/tokenize", json{{"model", "nope"}, {"prompt", "x"}}), 404, "model");
}

TEST_F(E2eOpenAiTest, BadRequestsGetOpenAiErrors) {
  ExpectError(Post("/v1/completions", std::string("{not json")), 400, "");
  ExpectError(Post("/v1/completions", std::string("[1, 2]")), 400, "");
  // Bodies past 16 MiB are not read.
  EXPECT_EQ(Post("/v1/completions", std::string(17 << 20, ' ')).status, 413);
  auto completion = [](json fields) {
    json body = {{"model", kModel}, {"prompt", kOnce}};
    body.update(fields);
    return Post("/v1/completions", body);
  };
  auto chat = [](json fields) {
    json body = {{"model", kChatModel}, {"messages", UserSays(kOnce)}};
    body.update(fields);
    return Post("/v1/chat/completions", body);
  };
  // Fields that would change the answer are refused by name.
  ExpectError(completion({{"echo", true}}), 400, "echo");
  ExpectError(completion({{"suffix", "The end."}}), 400, "suffix");
  ExpectError(completion({{"best_of", 3}}), 400, "best_of");
  ExpectError(completion({{"logit_bias", {{"50", 100}}}}), 400, "logit_bias");
  ExpectError(completion({{"frobnicate", 1}}), 400, "frobnicate");
  ExpectError(chat({{"tools", json::array({{{"type", "function"}}})}}), 400, "tools");
  ExpectError(chat({{"response_format", {{"type", "json_object"}}}}), 400, "response_format");
  // Harmless ones are not.
  EXPECT_EQ(completion({{"user", "me"}, {"best_of", 1}, {"echo", false}, {"max_tokens", 1}}).status,
            200);
  EXPECT_EQ(chat({{"response_format", {{"type", "text"}}}, {"max_tokens", 1}}).status, 200);
  // Types and ranges, named as OpenAI names them.
  ExpectError(completion({{"temperature", "hot"}}), 400, "temperature");
  ExpectError(completion({{"temperature", -1}}), 400, "temperature");
  ExpectError(completion({{"top_p", 1.5}}), 400, "top_p");
  ExpectError(completion({{"max_tokens", 0}}), 400, "max_tokens");
  ExpectError(completion({{"max_tokens", 100000}}), 400, "max_tokens");
  ExpectError(completion({{"presence_penalty", 3}}), 400, "presence_penalty");
  ExpectError(completion({{"frequency_penalty", -2.5}}), 400, "frequency_penalty");
  ExpectError(completion({{"logprobs", 21}}), 400, "logprobs");
  ExpectError(completion({{"n", 0}}), 400, "n");
  ExpectError(completion({{"stop", 5}}), 400, "stop");
  ExpectError(completion({{"stop", json::array({"a", ""})}}), 400, "stop");
  ExpectError(completion({{"stream", "yes"}}), 400, "stream");
  ExpectError(completion({{"prompt", {1, 2, 3}}}), 400, "prompt");
  ExpectError(completion({{"prompt", nullptr}}), 400, "prompt");
  ExpectError(chat({{"top_logprobs", 3}}), 400, "top_logprobs");
  ExpectError(chat({{"logprobs", true}, {"top_logprobs", 21}}), 400, "top_logprobs");
  ExpectError(chat({{"messages", json::array({{{"role", "tool"}, {"content", "x"}}})}}), 400,
              "messages");
  ExpectError(chat({{"messages", json::array()}}), 400, "messages");
  ExpectError(chat({{"messages", json::array({{{"role", "user"},
                                                {"content", json::array({{{"type", "image_url"}}})}}})}}),
              400, "messages[0].content");
  // A model without a chat template cannot chat.
  ExpectError(chat({{"model", kModel}}), 400, "messages");
  // Unknown model: 404, as OpenAI's model_not_found.
  const Reply unknown = completion({{"model", "no-such-model"}});
  ExpectError(unknown, 404, "model");
  EXPECT_EQ(unknown.Json()["error"]["code"], "model_not_found");
  ExpectError(completion({{"model", ""}}), 400, "model");
  // A prompt longer than the context.
  std::string too_long;
  for (int i = 0; i < 300; ++i) too_long += "Once upon a time ";
  ExpectError(completion({{"prompt", too_long}}), 400, "prompt");
}

// A raw connection to 127.0.0.1:port that has sent `body` to `path`; -1 on
// failure.
int SendRaw(int port, const std::string& path, const std::string& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  const std::string request = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Connection: close\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
                              body;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads until `until` is seen (or, when empty, until the server closes).
std::string ReceiveRaw(int fd, const std::string& until) {
  std::string received;
  char buffer[4096];
  while (until.empty() || received.find(until) == std::string::npos) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    received.append(buffer, n);
  }
  return received;
}

// A short completion, retried for up to four seconds while refused with 429.
Reply PostOnceAdmitted(const Service& service) {
  Reply reply;
  for (int attempt = 0; attempt < 200; ++attempt) {
    httplib::Client client("127.0.0.1", service.http_port);
    httplib::Result result = client.Post(
        "/v1/completions",
        json{{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 4}}.dump(),
        "application/json");
    if (result) reply = {result->status, result->body};
    if (reply.status != 429) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return reply;
}

TEST_F(E2eOpenAiTest, FullQueueIs429) {
  // 64 samples of one place each on a server of one place: the batch is
  // admitted, and holds its places until its last sample ends, seconds later.
  const json holder = {{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 500}, {"n", 64},
                       {"stop", "zzz"}, {"stream", true}};
  const int fd = SendRaw(narrow_->http_port, "/v1/completions", holder.dump());
  ASSERT_GE(fd, 0);
  ASSERT_NE(ReceiveRaw(fd, "data: ").find("data: "), std::string::npos);
  const Reply reply = Post("/v1/completions",
                           json{{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 1}},
                           *narrow_);
  ExpectError(reply, 429, "");
  EXPECT_EQ(reply.Json()["error"]["code"], "rate_limit_exceeded");
  EXPECT_EQ(reply.Json()["error"]["type"], "rate_limit_error");
  // Hanging up frees the places (ClientThatHangsUpCancelsItsGeneration).
  close(fd);
  EXPECT_EQ(PostOnceAdmitted(*narrow_).status, 200);
}

TEST_F(E2eOpenAiTest, ClientThatHangsUpCancelsItsGeneration) {
  // 64 samples of 500 tokens on one place take seconds; hanging up early
  // must free the place at once: when streamed, after the first token; else
  // after the headers, noticed by the whitespace written while waiting.
  for (const bool stream : {true, false}) {
    SCOPED_TRACE(stream ? "streamed" : "not streamed");
    const json body = {{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 500}, {"n", 64},
                       {"stop", "zzz"}, {"stream", stream}, {"seed", 3}};
    const int fd = SendRaw(narrow_->http_port, "/v1/completions", body.dump());
    ASSERT_GE(fd, 0);
    const std::string seen = stream ? "data: " : "\r\n\r\n";
    ASSERT_NE(ReceiveRaw(fd, seen).find(seen), std::string::npos);
    close(fd);
    const auto start = std::chrono::steady_clock::now();
    // The next request is served, not refused, once the cancel is seen.
    const Reply next = PostOnceAdmitted(*narrow_);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(next.status, 200) << next.body;
    // Generating the rest of 64 x 500 tokens takes several times this.
    EXPECT_LT(seconds, stream ? 1.0 : 2.0);
  }
  const std::string log = narrow_->process->Log();
  EXPECT_NE(log.find("\"openai_cancelled\""), std::string::npos) << log;
}

TEST_F(E2eOpenAiTest, UnloadMidStreamEndsWithA503Event) {
  // A model of its own, so that unloading it leaves the other tests alone.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::LoadModelRequest request;
    request.set_model(kChatModel);
    v1::ModelInfo info;
    ASSERT_TRUE(Stub(*narrow_)->LoadModel(&context, request, &info).ok());
  }
  std::thread unloader([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::UnloadModelRequest request;
    request.set_model(kChatModel);
    v1::UnloadModelResponse response;
    EXPECT_TRUE(Stub(*narrow_)->UnloadModel(&context, request, &response).ok());
  });
  // Raw: the response is cut short after the error event, which an HTTP
  // client library reports as a failed read.
  const json body = {{"model", kChatModel}, {"prompt", kOnce}, {"max_tokens", 500},
                     {"n", 64},           {"stop", "zzz"},   {"stream", true}};
  const int fd = SendRaw(narrow_->http_port, "/v1/completions", body.dump());
  ASSERT_GE(fd, 0);
  const std::string reply = ReceiveRaw(fd, "");
  close(fd);
  unloader.join();
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply.substr(0, 200);
  const std::vector<std::string> events = Events(reply);
  ASSERT_FALSE(events.empty());
  const json last = json::parse(events.back(), nullptr, false);
  ASSERT_TRUE(last.contains("error")) << events.back();
  EXPECT_EQ(last["error"]["type"], "server_error");
  EXPECT_NE(last["error"]["message"].get<std::string>().find("unloaded"), std::string::npos);
  // Afterwards the model is not loaded: 404.
  ExpectError(Post("/v1/completions", json{{"model", kChatModel}, {"prompt", kOnce}}, *narrow_),
              404, "model");
}

// SIGTERM while a stream is in flight: the server drains, so the stream ends
// normally within --shutdown_grace and the process exits 0.
TEST_F(E2eOpenAiTest, ShutdownDrainsStreamsInFlight) {
  Service draining = Start("openai-draining", {std::string("--preload=") + kModel});
  const json body = {{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 500},
                     {"stop", "zzz"}, {"stream", true}};
  const int fd = SendRaw(draining.http_port, "/v1/completions", body.dump());
  ASSERT_GE(fd, 0);
  std::string reply = ReceiveRaw(fd, "data: ");
  ASSERT_NE(reply.find("data: "), std::string::npos);
  int exit_status = -1;
  std::thread stopper([&] { exit_status = draining.process->Stop(std::chrono::seconds(10)); });
  reply += ReceiveRaw(fd, "");
  close(fd);
  stopper.join();
  EXPECT_EQ(exit_status, 0) << draining.process->Log();
  const std::vector<std::string> events = Events(reply);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json last = json::parse(events[events.size() - 2], nullptr, false);
  ASSERT_FALSE(last.contains("error")) << events[events.size() - 2];
}

// Past the grace period the streams still running end with a 503-class error
// event, and the process still exits 0.
TEST_F(E2eOpenAiTest, ShutdownPastTheGraceEndsStreamsWithA503Event) {
  Service doomed = Start("openai-doomed", {std::string("--preload=") + kModel,
                                           "--max_running=1", "--max_queued=0",
                                           "--shutdown_grace=200ms"});
  const json body = {{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 500}, {"n", 64},
                     {"stop", "zzz"}, {"stream", true}};
  const int fd = SendRaw(doomed.http_port, "/v1/completions", body.dump());
  ASSERT_GE(fd, 0);
  std::string reply = ReceiveRaw(fd, "data: ");
  ASSERT_NE(reply.find("data: "), std::string::npos);
  int exit_status = -1;
  std::thread stopper([&] { exit_status = doomed.process->Stop(std::chrono::seconds(10)); });
  reply += ReceiveRaw(fd, "");
  close(fd);
  stopper.join();
  EXPECT_EQ(exit_status, 0) << doomed.process->Log();
  const std::vector<std::string> events = Events(reply);
  ASSERT_FALSE(events.empty());
  const json last = json::parse(events.back(), nullptr, false);
  ASSERT_TRUE(last.contains("error")) << events.back();
  EXPECT_EQ(last["error"]["type"], "server_error");
  EXPECT_NE(last["error"]["message"].get<std::string>().find("shutdown grace period"),
            std::string::npos)
      << last.dump();
}

TEST_F(E2eOpenAiTest, HttpThreadsBoundTheConnectionsServedAtOnce) {
  Service single = Start("openai-single", {std::string("--preload=") + kModel,
                                           "--http_threads=1"});
  const json body = {{"model", kModel}, {"prompt", kOnce}, {"max_tokens", 500}, {"n", 64},
                     {"stop", "zzz"}, {"stream", true}};
  const int fd = SendRaw(single.http_port, "/v1/completions", body.dump());
  ASSERT_GE(fd, 0);
  ASSERT_NE(ReceiveRaw(fd, "data: ").find("data: "), std::string::npos);
  // The stream holds the only thread: another request waits to be accepted.
  httplib::Client client("127.0.0.1", single.http_port);
  client.set_read_timeout(0, 300 * 1000);
  EXPECT_FALSE(client.Get("/v1/models"));
  close(fd);
  httplib::Client after("127.0.0.1", single.http_port);
  after.set_read_timeout(10, 0);
  httplib::Result served = after.Get("/v1/models");
  ASSERT_TRUE(served);
  EXPECT_EQ(served->status, 200);
  EXPECT_EQ(single.process->Stop(std::chrono::seconds(10)), 0);
}

}  // namespace
}  // namespace wq::e2e
