// The quantizer service's roles (e2e_security_test.cc has the rest): a client
// token may read jobs and artifacts but not submit or cancel jobs.
#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "server/client_channel.h"
#include "tests/e2e_support.h"
#include "wq/v1/quantizer.grpc.pb.h"

namespace wq::e2e {
namespace {

TEST(E2eSecurityTest, QuantizerRoles) {
  const std::string tokens = GetServers().dir + "/quantizer_tokens";
  std::ofstream(tokens) << "client c-token\noperator o-token\n";
  ServerProcess process("quantizer_auth", GetServers().quantizer_binary,
                        {"--auth_tokens_file=" + tokens,
                         "--model_root=" + GetServers().model_root,
                         "--artifact_root=" + GetServers().dir + "/quantizer_auth_artifacts",
                         "--threads=1"},
                        GetServers().dir);
  const int port = process.WaitForPort(std::chrono::seconds(30));
  ASSERT_GT(port, 0);
  auto stub = [&](const char* token) {
    ClientSecurity security;
    security.token = token;
    return v1::QuantizerService::NewStub(
        *MakeClientChannel("127.0.0.1:" + std::to_string(port), security));
  };
  auto context = [] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return c;
  };
  v1::Job job;
  v1::SubmitJobRequest submit;
  submit.set_model_id("stories260K");
  grpc::Status status = stub("c-token")->SubmitJob(context().get(), submit, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  v1::CancelJobRequest cancel;
  cancel.set_job_id("no-such-job");
  status = stub("c-token")->CancelJob(context().get(), cancel, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  status = stub("o-token")->CancelJob(context().get(), cancel, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  v1::ListJobsResponse jobs;
  status = stub("c-token")->ListJobs(context().get(), v1::ListJobsRequest(), &jobs);
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = stub("")->ListJobs(context().get(), v1::ListJobsRequest(), &jobs);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  EXPECT_EQ(process.Stop(std::chrono::seconds(10)), 0);
}

TEST(E2eValidationTest, QuantizerRequestsAreValidated) {
  auto stub = v1::QuantizerService::NewStub(
      grpc::CreateChannel(GetServers().quantizer, grpc::InsecureChannelCredentials()));
  grpc::ClientContext submit_context;
  v1::SubmitJobRequest submit;
  submit.set_model_id("stories\xff");
  v1::Job job;
  grpc::Status status = stub->SubmitJob(&submit_context, submit, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "model_id is not valid UTF-8");
  grpc::ClientContext get_context;
  v1::GetJobRequest get;
  get.set_job_id(std::string(300, 'j'));
  status = stub->GetJob(&get_context, get, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "job_id is 300 bytes; at most 256 are accepted");
}

}  // namespace
}  // namespace wq::e2e
