// Capacity is freed when a client's connection closes under a stream it
// never cancelled: an asynchronous (callback API) client reads one token,
// then its channel's socket is shut down. A --max_running=1 --max_queued=0
// server must serve the next request within a second.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/create_channel_posix.h>
#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "tests/e2e_support.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {
namespace {

using Clock = std::chrono::steady_clock;

// Reads a GenerateStream through the callback API until told to stop
// reading; never cancels.
class StreamReader : public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  StreamReader(v1::InferenceService::Stub* stub, const v1::GenerateStreamRequest& request) {
    stub->async()->GenerateStream(&context_, &request, this);
    StartRead(&message_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) return;
    ++tokens_;
    changed_.notify_all();
    StartRead(&message_);
  }

  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    changed_.notify_all();
  }

  bool WaitForFirstToken(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, timeout, [this] { return tokens_ > 0 || done_; }) &&
           tokens_ > 0;
  }

  grpc::Status WaitForDone() {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [this] { return done_; });
    return status_;
  }

 private:
  grpc::ClientContext context_;
  v1::GenerateStreamResponse message_;
  std::mutex mu_;
  std::condition_variable changed_;
  int tokens_ = 0;
  bool done_ = false;
  grpc::Status status_;
};

int ConnectTo(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ADD_FAILURE() << "cannot connect to port " << port;
    return -1;
  }
  return fd;
}

TEST(E2eCapacityTest, AsyncChannelClosedWithoutCancelFreesTheSlot) {
  const Servers& servers = GetServers();
  ServerProcess server("inference_one_slot", servers.inference_binary,
                       {"--model_root=" + servers.model_root,
                        "--artifact_root=" + servers.artifact_root, "--threads=1",
                        "--max_running=1", "--max_queued=0", "--preload=stories260K"},
                       servers.dir);
  const int port = server.WaitForPort(std::chrono::seconds(60));
  ASSERT_GT(port, 0);
  auto other = v1::InferenceService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  auto one_token = [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GenerateRequest request;
    request.set_model("stories260K");
    request.add_prompts("Once upon a time");
    request.mutable_sampling()->set_max_new_tokens(1);
    v1::GenerateResponse response;
    return other->Generate(&context, request, &response);
  };
  ASSERT_TRUE(one_token().ok());

  // A stream that would otherwise run to the end of the model's context.
  v1::GenerateStreamRequest request;
  request.set_model("stories260K");
  request.set_prompt("Once upon a time");
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_seed(7);
  request.mutable_sampling()->set_max_new_tokens(2048);
  // Alone, the same stream (same seed) holds the slot this long.
  const Clock::time_point started = Clock::now();
  int solo_tokens = 0;
  {
    grpc::ClientContext context;
    auto solo = other->GenerateStream(&context, request);
    v1::GenerateStreamResponse message;
    while (solo->Read(&message)) solo_tokens += message.has_token();
    ASSERT_TRUE(solo->Finish().ok());
  }
  const auto solo_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
  std::cout << "alone: " << solo_tokens << " tokens in " << solo_ms << " ms\n";

  const int fd = ConnectTo(port);
  ASSERT_GE(fd, 0);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateInsecureChannelFromFd("closing", fd);
  auto stub = v1::InferenceService::NewStub(channel);
  StreamReader reader(stub.get(), request);
  ASSERT_TRUE(reader.WaitForFirstToken(std::chrono::seconds(30)));
  // The slot is taken: the one-slot server has no waiting line.
  EXPECT_EQ(one_token().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  // The channel's connection goes away; the stream is never cancelled.
  const Clock::time_point closed = Clock::now();
  ASSERT_EQ(::shutdown(fd, SHUT_RDWR), 0);
  grpc::Status next = one_token();
  while (!next.ok() && next.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
         Clock::now() - closed < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    next = one_token();
  }
  const auto freed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - closed).count();
  EXPECT_TRUE(next.ok()) << next.error_message();
  EXPECT_LT(freed_ms, 1000);
  std::cout << "slot free " << freed_ms << " ms after the channel closed\n";
  EXPECT_FALSE(reader.WaitForDone().ok());
  EXPECT_EQ(server.Stop(std::chrono::seconds(10)), 0) << server.Log();
}

}  // namespace
}  // namespace wq::e2e
