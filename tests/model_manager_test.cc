// ModelManager without gRPC: unloading a model that is serving requests.
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "inference_service/model_manager.h"

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

}  // namespace
}  // namespace wq
