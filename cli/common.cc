#include "cli/common.h"

#include <chrono>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"

ABSL_FLAG(std::string, server, "", "address of the service the command talks to (overrides --quantizer / --inference)");
ABSL_FLAG(std::string, quantizer, "127.0.0.1:50051", "quantizer service address");
ABSL_FLAG(std::string, inference, "127.0.0.1:50052", "inference service address");
ABSL_FLAG(int, timeout_s, 120, "deadline of unary calls in seconds");

ABSL_FLAG(std::string, model, "", "model id (quantize) or model / artifact id (load, generate, chat, tokenize)");

namespace wq {


int UsageError(const std::string& message) {
  std::cerr << "wqctl: " << message << "\n";
  return kUsage;
}

int RpcError(const char* what, const grpc::Status& status) {
  std::cerr << "wqctl: " << what << " failed (code " << status.error_code()
            << "): " << status.error_message() << "\n";
  return kFailed;
}

std::shared_ptr<grpc::Channel> Connect(bool inference) {
  std::string address = absl::GetFlag(FLAGS_server);
  if (address.empty()) {
    address = inference ? absl::GetFlag(FLAGS_inference) : absl::GetFlag(FLAGS_quantizer);
  }
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s)));
}

std::string Lower(const std::string& s) { return absl::AsciiStrToLower(s); }

}  // namespace wq
