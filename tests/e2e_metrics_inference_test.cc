// The inference service's /metrics, request ids and request log lines, over a
// real server with stories260K: counters and histograms move by exactly what
// the calls did, as prometheus_client reads them.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "gtest/gtest.h"
#include "tests/e2e_metrics_support.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {
namespace {

constexpr char kGenerate[] = "/wq.v1.InferenceService/Generate";
constexpr char kGenerateStream[] = "/wq.v1.InferenceService/GenerateStream";
constexpr char kLoadModel[] = "/wq.v1.InferenceService/LoadModel";

v1::GenerateRequest GenerateRequest(const std::string& model, int max_new_tokens) {
  v1::GenerateRequest request;
  request.set_model(model);
  request.add_prompts("Once upon a time");
  request.add_prompts("The cat");
  request.mutable_sampling()->set_temperature(0);
  request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
  return request;
}

// Sends `request` as is on a new connection; the response's status line.
std::string RawHttp(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
    char buffer[256];
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) response.assign(buffer, n);
  }
  close(fd);
  return response.substr(0, response.find("\r\n"));
}

TEST(E2eMetricsTest, InferenceCountsRequestsTokensAndLatencies) {
  const std::string dir = ScratchDirWithStories("inference");
  MetricsServer server("inference", Runfiles() + "/inference_service/inference_service",
                       {"--model_root=" + dir + "/models", "--artifact_root=" + dir + "/artifacts",
                        "--threads=1"},
                       dir);
  ASSERT_GT(server.http_port, 0);
  auto stub = v1::InferenceService::NewStub(server.Channel());
  httplib::Client http("127.0.0.1", server.http_port);
  http.set_keep_alive(true);  // one connection: each request logged before the next

  const Scrape before = ScrapeMetrics(http, "scrape-before");
  EXPECT_EQ(before.status, 200);
  EXPECT_EQ(before.content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(before.request_id, "scrape-before");
  EXPECT_EQ(Value(before, "wq:models_loaded"), 0);

  {
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", "load-1");
    v1::LoadModelRequest request;
    request.set_model("stories260K");
    v1::ModelInfo info;
    ASSERT_TRUE(stub->LoadModel(&context, request, &info).ok());
    EXPECT_EQ(ReturnedRequestId(context), "load-1");
  }

  // A unary batch of two prompts, with the client's id.
  int prompt_tokens = 0, generated_tokens = 0, unary_prompt = 0, unary_generated = 0;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", "gen-unary-1");
    v1::GenerateResponse response;
    grpc::Status status = stub->Generate(&context, GenerateRequest("stories260K", 6), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(ReturnedRequestId(context), "gen-unary-1");
    ASSERT_EQ(response.results_size(), 2);
    for (const auto& r : response.results()) {
      unary_prompt += r.usage().prompt_tokens();
      unary_generated += r.usage().completion_tokens();
    }
    prompt_tokens += unary_prompt;
    generated_tokens += unary_generated;
  }
  // A stream.
  int stream_prompt = 0, stream_generated = 0;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", "gen-stream-1");
    v1::GenerateStreamRequest request;
    request.set_model("stories260K");
    request.set_prompt("One day");
    request.mutable_sampling()->set_temperature(0);
    request.mutable_sampling()->set_max_new_tokens(5);
    auto reader = stub->GenerateStream(&context, request);
    v1::GenerateStreamResponse message;
    int tokens = 0;
    while (reader->Read(&message)) {
      if (message.has_token()) ++tokens;
      if (message.has_end()) {
        stream_prompt = message.end().usage().prompt_tokens();
        stream_generated = message.end().usage().completion_tokens();
      }
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(ReturnedRequestId(context), "gen-stream-1");
    EXPECT_EQ(tokens, stream_generated);
    prompt_tokens += stream_prompt;
    generated_tokens += stream_generated;
  }
  // Without an id the server makes one; an unusable one is replaced.
  std::string generated_id;
  for (const char* client_id : {"", "has space"}) {
    grpc::ClientContext context;
    SetDeadline(&context);
    if (*client_id != '\0') context.AddMetadata("x-request-id", client_id);
    v1::GenerateResponse response;
    ASSERT_TRUE(stub->Generate(&context, GenerateRequest("stories260K", 3), &response).ok());
    for (const auto& r : response.results()) {
      prompt_tokens += r.usage().prompt_tokens();
      generated_tokens += r.usage().completion_tokens();
    }
    generated_id = ReturnedRequestId(context);
    EXPECT_EQ(generated_id.size(), 32u) << generated_id;
    EXPECT_EQ(generated_id.find_first_not_of("0123456789abcdef"), std::string::npos);
  }
  // Rejected before any work: the id comes back on the failed call too.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", "rejected-1");
    v1::GenerateResponse response;
    grpc::Status status = stub->Generate(&context, GenerateRequest("nope", 3), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(ReturnedRequestId(context), "rejected-1");
  }
  // A method the server does not have: gRPC answers UNIMPLEMENTED itself.
  {
    grpc::GenericStub generic(server.Channel());
    grpc::ClientContext context;
    SetDeadline(&context);
    context.AddMetadata("x-request-id", "unimplemented-1");
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1), response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, "/wq.v1.InferenceService/NoSuchMethod", grpc::StubOptions(),
                      &request, &response, [&](grpc::Status status) { done.set_value(status); });
    EXPECT_EQ(done.get_future().get().error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_EQ(ReturnedRequestId(context), "unimplemented-1");
  }
  {
    httplib::Result unmatched = http.Get("/no/such/route");
    ASSERT_TRUE(unmatched);
    EXPECT_EQ(unmatched->status, 404);
    EXPECT_EQ(unmatched->get_header_value("x-request-id").size(), 32u);
  }
  const Scrape after = ScrapeMetrics(http, "scrape-after");
  ASSERT_TRUE(after.parsed.is_object()) << after.text;
  const std::map<std::string, std::string> model = {{"model_name", "stories260K"}};

  EXPECT_EQ(Value(after, "wq:models_loaded"), 1);
  EXPECT_EQ(Value(after, "wq:prompt_tokens_total", model), prompt_tokens);
  EXPECT_EQ(Value(after, "wq:generation_tokens_total", model), generated_tokens);
  // Requests: 2 prompts + 1 stream + 2 x 2 prompts finished, none running.
  constexpr int kGenerations = 2 + 1 + 4;
  EXPECT_EQ(Value(after, "wq:time_to_first_token_seconds_count", model), kGenerations);
  EXPECT_EQ(Value(after, "wq:e2e_request_latency_seconds_count", model), kGenerations);
  EXPECT_EQ(Value(after, "wq:request_queue_time_seconds_count", model), kGenerations);
  // One inter-token gap per token after each generation's first.
  EXPECT_EQ(Value(after, "wq:time_per_output_token_seconds_count", model),
            generated_tokens - kGenerations);
  EXPECT_GT(Value(after, "wq:time_per_output_token_seconds_sum", model), 0);
  EXPECT_GT(Value(after, "wq:e2e_request_latency_seconds_sum", model),
            Value(after, "wq:time_to_first_token_seconds_sum", model));
  for (const char* histogram :
       {"wq:time_to_first_token_seconds", "wq:time_per_output_token_seconds",
        "wq:e2e_request_latency_seconds", "wq:request_queue_time_seconds"}) {
    ExpectConsistentHistogram(after, histogram, model);
  }
  EXPECT_EQ(Value(after, "wq:request_finished_total",
                  {{"model_name", "stories260K"}, {"finished_reason", "length"}}) +
                Value(after, "wq:request_finished_total",
                      {{"model_name", "stories260K"}, {"finished_reason", "eos"}}),
            kGenerations);

  auto requests = [&](const std::string& method, const std::string& code) {
    return Value(after, "wq:requests_total", {{"method", method}, {"code", code}});
  };
  EXPECT_EQ(requests(kLoadModel, "OK"), 1);
  EXPECT_EQ(requests(kGenerate, "OK"), 3);
  EXPECT_EQ(requests(kGenerate, "NOT_FOUND"), 1);
  EXPECT_EQ(requests(kGenerateStream, "OK"), 1);
  // Labelled so that clients cannot grow the label set; logged by name.
  EXPECT_EQ(requests("(unknown)", "UNIMPLEMENTED"), 1);
  EXPECT_EQ(after.text.find("NoSuchMethod"), std::string::npos);
  EXPECT_EQ(requests("GET /metrics", "200"), 1);  // the first scrape
  EXPECT_EQ(requests("GET (unmatched)", "404"), 1);

  // One log line per RPC, with its id, code and token counts.
  const std::vector<nlohmann::json> lines = RequestLogLines(*server.process);
  EXPECT_EQ(RequestLogLines(*server.process, "grpc").size(), 7u) << server.process->Log();
  const std::vector<nlohmann::json> unary = LinesWithId(lines, "gen-unary-1");
  ASSERT_EQ(unary.size(), 1u);
  EXPECT_EQ(unary[0]["level"], "info");
  EXPECT_EQ(unary[0]["method"], kGenerate);
  EXPECT_EQ(unary[0]["code"], "OK");
  EXPECT_EQ(unary[0]["model"], "stories260K");
  EXPECT_EQ(unary[0]["prompt_tokens"], unary_prompt);
  EXPECT_EQ(unary[0]["generated_tokens"], unary_generated);
  EXPECT_GT(unary[0]["duration_ms"].get<double>(), 0);
  EXPECT_NE(unary[0]["peer"].get<std::string>().find("127.0.0.1"), std::string::npos);
  const std::vector<nlohmann::json> stream = LinesWithId(lines, "gen-stream-1");
  ASSERT_EQ(stream.size(), 1u);
  EXPECT_EQ(stream[0]["method"], kGenerateStream);
  EXPECT_EQ(stream[0]["prompt_tokens"], stream_prompt);
  EXPECT_EQ(stream[0]["generated_tokens"], stream_generated);
  const std::vector<nlohmann::json> rejected = LinesWithId(lines, "rejected-1");
  ASSERT_EQ(rejected.size(), 1u);
  EXPECT_EQ(rejected[0]["code"], "NOT_FOUND");
  EXPECT_NE(rejected[0]["error"].get<std::string>().find("nope"), std::string::npos);
  EXPECT_EQ(LinesWithId(lines, "load-1").size(), 1u);
  const std::vector<nlohmann::json> unimplemented = LinesWithId(lines, "unimplemented-1");
  ASSERT_EQ(unimplemented.size(), 1u);
  EXPECT_EQ(unimplemented[0]["method"], "/wq.v1.InferenceService/NoSuchMethod");
  EXPECT_EQ(unimplemented[0]["code"], "UNIMPLEMENTED");
  EXPECT_EQ(LinesWithId(lines, generated_id).size(), 1u);
  // HTTP: the scrapes by their ids, the unmatched path with a made-up one.
  const std::vector<nlohmann::json> scraped = LinesWithId(lines, "scrape-before");
  ASSERT_EQ(scraped.size(), 1u);
  EXPECT_EQ(scraped[0]["protocol"], "http");
  EXPECT_EQ(scraped[0]["route"], "GET /metrics");
  EXPECT_EQ(scraped[0]["status"], 200);
  std::set<std::string> http_routes;
  for (const auto& line : RequestLogLines(*server.process, "http")) {
    http_routes.insert(line["route"].get<std::string>());
  }
  EXPECT_TRUE(http_routes.count("GET (unmatched)")) << server.process->Log();

  // The gauges settle once the loop is past the step that ended the last
  // generation (clients hear of the end within that step).
  Scrape idle;
  for (int i = 0; i < 50; ++i) {
    idle = ScrapeMetrics(http, "scrape-idle");
    if (Value(idle, "wq:num_requests_running", model) == 0 &&
        Value(idle, "wq:kv_cache_capacity_tokens", model) == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(Value(idle, "wq:num_requests_running", model), 0);
  EXPECT_EQ(Value(idle, "wq:num_requests_waiting", model), 0);
  EXPECT_EQ(Value(idle, "wq:kv_cache_usage_tokens", model), 0);
  EXPECT_EQ(Value(idle, "wq:kv_cache_capacity_tokens", model), 0);
  // Present (a series per loaded model), not merely absent.
  EXPECT_TRUE(SampleValue(idle.parsed, "wq:num_requests_running", model).has_value());

  // httplib refuses a malformed request before routing; it is logged and
  // counted all the same (read once the server has stopped, as it is logged
  // after its response is written, and on another connection).
  EXPECT_EQ(RawHttp(server.http_port, "BOGUS / HTTP/1.1\r\nHost: x\r\n\r\n"),
            "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);
  bool rejected_logged = false;
  for (const auto& line : RequestLogLines(*server.process, "http")) {
    if (line["route"] == "(rejected before routing)" && line["status"] == 400) {
      EXPECT_EQ(line["request_id"].get<std::string>().size(), 32u);
      rejected_logged = true;
    }
  }
  EXPECT_TRUE(rejected_logged) << server.process->Log();
}

}  // namespace
}  // namespace wq::e2e
