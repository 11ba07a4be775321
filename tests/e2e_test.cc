// End-to-end test: starts the real quantizer_service and inference_service
// binaries (from runfiles) on loopback with port 0, talks to them through the
// generated stubs, then stops them with SIGTERM and checks they exit 0.
// Service-specific tests: e2e_quantizer_test.cc, e2e_inference_test.cc.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e_support.h"
#include "tests/grpc_health.grpc.pb.h"
#include "tests/grpc_reflection.grpc.pb.h"
#include "tests/grpc_reflection_v1.grpc.pb.h"

namespace wq::e2e {
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

Servers* g_servers = nullptr;

class ServersEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const std::string srcdir = Env("TEST_SRCDIR");
    ASSERT_FALSE(srcdir.empty()) << "run under bazel test (TEST_SRCDIR unset)";
    const std::string runfiles = srcdir + "/wq";
    std::string tmp = Env("TEST_TMPDIR");
    if (tmp.empty()) tmp = "/tmp";
    std::string dir = tmp + "/e2e.XXXXXX";
    ASSERT_NE(mkdtemp(dir.data()), nullptr);

    auto servers = std::make_unique<Servers>();
    // A writable copy, so that tests can add model directories of their own.
    servers->model_root = dir + "/models";
    std::error_code error;
    std::filesystem::create_directories(servers->model_root, error);
    ASSERT_FALSE(error) << error.message();
    std::filesystem::copy(runfiles + "/testdata/models/stories260K",
                          servers->model_root + "/stories260K",
                          std::filesystem::copy_options::recursive, error);
    ASSERT_FALSE(error) << error.message();
    servers->artifact_root = dir + "/artifacts";
    servers->quantizer_binary = runfiles + "/quantizer_service/quantizer_service";
    servers->inference_binary = runfiles + "/inference_service/inference_service";
    servers->dir = dir;
    const std::vector<std::string> roots = {"--model_root=" + servers->model_root,
                                            "--artifact_root=" + servers->artifact_root,
                                            "--threads=2"};
    quantizer_ = std::make_unique<ServerProcess>(
        "quantizer", servers->quantizer_binary, roots, dir);
    std::vector<std::string> inference_args = roots;
    inference_args.push_back("--max_new_tokens_cap=256");
    inference_ = std::make_unique<ServerProcess>("inference", servers->inference_binary,
                                                 inference_args, dir);
    const int qport = quantizer_->WaitForPort(std::chrono::seconds(30));
    const int iport = inference_->WaitForPort(std::chrono::seconds(30));
    ASSERT_GT(qport, 0);
    ASSERT_GT(iport, 0);
    servers->quantizer = "127.0.0.1:" + std::to_string(qport);
    servers->inference = "127.0.0.1:" + std::to_string(iport);
    g_servers = servers.release();
  }

  void TearDown() override {
    // Graceful shutdown is part of the contract: both must exit 0 promptly.
    for (ServerProcess* server : {quantizer_.get(), inference_.get()}) {
      if (server == nullptr) continue;
      const int status = server->Stop(std::chrono::seconds(10));
      EXPECT_EQ(status, 0) << "server did not exit cleanly on SIGTERM; log:\n"
                           << server->Log();
    }
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      std::cerr << "---- quantizer log ----\n" << quantizer_->Log()
                << "---- inference log ----\n" << inference_->Log();
    }
  }

 private:
  std::unique_ptr<ServerProcess> quantizer_;
  std::unique_ptr<ServerProcess> inference_;
};

int HealthStatus(const std::string& address, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << service << ": " << status.error_message();
  return response.status();
}

// One request on a reflection stream of either version (Reflection is
// grpc::reflection::v1 or ::v1alpha); its one response.
template <typename Reflection>
typename Reflection::ServerReflectionResponse Reflect(
    const std::string& address, const typename Reflection::ServerReflectionRequest& request) {
  auto stub = Reflection::ServerReflection::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&context);
  EXPECT_TRUE(stream->Write(request));
  stream->WritesDone();
  typename Reflection::ServerReflectionResponse response, extra;
  EXPECT_TRUE(stream->Read(&response));
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

struct V1alpha {
  using ServerReflection = grpc::reflection::v1alpha::ServerReflection;
  using ServerReflectionRequest = grpc::reflection::v1alpha::ServerReflectionRequest;
  using ServerReflectionResponse = grpc::reflection::v1alpha::ServerReflectionResponse;
};
struct V1 {
  using ServerReflection = grpc::reflection::v1::ServerReflection;
  using ServerReflectionRequest = grpc::reflection::v1::ServerReflectionRequest;
  using ServerReflectionResponse = grpc::reflection::v1::ServerReflectionResponse;
};

template <typename Reflection>
std::vector<std::string> ReflectedServices(const std::string& address) {
  typename Reflection::ServerReflectionRequest request;
  request.set_list_services("");
  const auto response = Reflect<Reflection>(address, request);
  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service()) {
    names.push_back(service.name());
  }
  return names;
}

TEST(E2eServerTest, HealthIsServing) {
  const Servers& s = GetServers();
  constexpr int kServing = grpc::health::v1::HealthCheckResponse::SERVING;
  EXPECT_EQ(HealthStatus(s.quantizer, ""), kServing);
  EXPECT_EQ(HealthStatus(s.quantizer, "wq.v1.QuantizerService"), kServing);
  EXPECT_EQ(HealthStatus(s.inference, ""), kServing);
  EXPECT_EQ(HealthStatus(s.inference, "wq.v1.InferenceService"), kServing);
}

TEST(E2eServerTest, ReflectionListsServices) {
  const Servers& s = GetServers();
  EXPECT_THAT(ReflectedServices<V1alpha>(s.quantizer),
              ::testing::Contains(std::string("wq.v1.QuantizerService")));
  EXPECT_THAT(ReflectedServices<V1alpha>(s.inference),
              ::testing::Contains(std::string("wq.v1.InferenceService")));
  // v1 answers as v1alpha does (grpcurl and Postman ask v1 first).
  EXPECT_EQ(ReflectedServices<V1>(s.quantizer), ReflectedServices<V1alpha>(s.quantizer));
  EXPECT_THAT(ReflectedServices<V1>(s.inference),
              ::testing::Contains(std::string("wq.v1.InferenceService")));
}

TEST(E2eServerTest, ReflectionV1DescribesServices) {
  grpc::reflection::v1::ServerReflectionRequest request;
  request.set_file_containing_symbol("wq.v1.InferenceService");
  const grpc::reflection::v1::ServerReflectionResponse response =
      Reflect<V1>(GetServers().inference, request);
  ASSERT_TRUE(response.has_file_descriptor_response()) << response.DebugString();
  bool found = false;
  for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    ASSERT_TRUE(file.ParseFromString(bytes));
    if (file.name() != "wq/v1/inference.proto") continue;
    found = true;
    ASSERT_GE(file.service_size(), 1);
    EXPECT_EQ(file.service(0).name(), "InferenceService");
  }
  EXPECT_TRUE(found);
}

}  // namespace

const Servers& GetServers() {
  if (g_servers == nullptr) {
    // Setup failed; the environment already reported why.
    static const Servers* const kEmpty = new Servers();
    return *kEmpty;
  }
  return *g_servers;
}

}  // namespace wq::e2e

int main(int argc, char** argv) {
  // A server that refuses a TLS handshake (mutual TLS without a client
  // certificate) can close the socket while OpenSSL's client still writes to
  // it with write(2): ignored, the write fails instead of ending the test.
  signal(SIGPIPE, SIG_IGN);
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new wq::e2e::ServersEnvironment());
  return RUN_ALL_TESTS();
}
