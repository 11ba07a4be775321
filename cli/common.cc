#include "cli/common.h"

#include <chrono>
#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "server/client_channel.h"

ABSL_FLAG(std::string, server, "", "address of the service the command talks to (overrides --quantizer / --inference)");
ABSL_FLAG(std::string, quantizer, "127.0.0.1:50051", "quantizer service address");
ABSL_FLAG(std::string, inference, "127.0.0.1:50052", "inference service address");
ABSL_FLAG(int, timeout_s, 120, "deadline of unary calls in seconds");
ABSL_FLAG(std::string, token, "",
          "bearer token for servers started with tokens (default: $WQ_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the server's certificate; turns TLS on");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for servers that require one");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");

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
  ClientSecurity security;
  security.token = absl::GetFlag(FLAGS_token);
  if (const char* env = std::getenv("WQ_TOKEN"); security.token.empty() && env != nullptr) {
    security.token = env;
  }
  security.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  security.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  security.tls_key = absl::GetFlag(FLAGS_tls_key);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeClientChannel(address, security);
  if (!channel.ok()) std::exit(UsageError(std::string(channel.status().message())));
  return *std::move(channel);
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s)));
}

std::string Lower(const std::string& s) { return absl::AsciiStrToLower(s); }

}  // namespace wq
