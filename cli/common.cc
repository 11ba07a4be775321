#include "cli/common.h"

#include <chrono>
#include <cstdlib>
#include <iostream>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "server/client_channel.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, server, "", "address of the service the command talks to (overrides --quantizer / --inference)");
ABSL_FLAG(std::string, quantizer, "127.0.0.1:50051", "quantizer service address");
ABSL_FLAG(std::string, inference, "127.0.0.1:50052", "inference service address");
ABSL_FLAG(int, timeout_s, 120,
          "deadline of the whole command in seconds, streams (watch, generate) and retries "
          "included; past it wqctl exits 4");
ABSL_FLAG(bool, wait_for_ready, false,
          "wait (within --timeout_s) for an unreachable server to come up instead of failing "
          "at once with exit code 3");
ABSL_FLAG(std::string, output, "text",
          "text, or json: one JSON object per line on stdout (one per message of a stream)");
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

int ExitCodeOf(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return kOk;
    case grpc::StatusCode::UNAVAILABLE:
      return kUnavailable;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return kTimeout;
    default:
      return kFailed;
  }
}

int RpcError(const char* what, const grpc::Status& status) {
  std::cerr << "wqctl: " << what << " failed (code " << status.error_code()
            << "): " << status.error_message() << "\n";
  const int exit_code = ExitCodeOf(status);
  if (JsonOutput()) {
    std::cout << nlohmann::json{{"error",
                                 {{"rpc", what},
                                  {"code", static_cast<int>(status.error_code())},
                                  {"message", status.error_message()},
                                  {"exit_code", exit_code}}}}
                     .dump()
              << std::endl;
  }
  return exit_code;
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

absl::Time CommandDeadline() {
  static const absl::Time deadline = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  return deadline;
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(CommandDeadline()));
  context->set_wait_for_ready(absl::GetFlag(FLAGS_wait_for_ready));
}

std::string Lower(const std::string& s) { return absl::AsciiStrToLower(s); }

bool JsonOutput() { return absl::GetFlag(FLAGS_output) == "json"; }

void PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string line;
  // Only fails for messages with Any fields of unknown types; wq has none.
  (void)google::protobuf::util::MessageToJsonString(message, &line, options);
  std::cout << line << std::endl;
}

}  // namespace wq
