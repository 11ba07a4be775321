// Helpers shared by wqctl's commands (one file per service's commands).
#ifndef WQ_CLI_COMMON_H_
#define WQ_CLI_COMMON_H_

#include <memory>
#include <string>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "absl/flags/declare.h"
#include "absl/time/time.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, quantizer);
ABSL_DECLARE_FLAG(std::string, inference);
ABSL_DECLARE_FLAG(int, timeout_s);
ABSL_DECLARE_FLAG(bool, wait_for_ready);
ABSL_DECLARE_FLAG(std::string, output);
ABSL_DECLARE_FLAG(std::string, model);

namespace wq {

// wqctl's exit codes, for CI scripts (README "Deploy on Kubernetes").
inline constexpr int kOk = 0;
inline constexpr int kFailed = 1;       // the job or request failed
inline constexpr int kUsage = 2;        // bad command line
inline constexpr int kUnavailable = 3;  // the server could not be reached
inline constexpr int kTimeout = 4;      // --timeout_s passed

// Prints the message and returns kUsage.
int UsageError(const std::string& message);
// Reports what failed and why (on stderr; with --output=json also as an
// {"error": ...} line on stdout) and returns the exit code of the status.
int RpcError(const char* what, const grpc::Status& status);
int ExitCodeOf(const grpc::Status& status);
// --server, else --inference or --quantizer.
std::shared_ptr<grpc::Channel> Connect(bool inference);
// The whole command's deadline, --timeout_s after it started: every call,
// streams and retries included, ends by then.
absl::Time CommandDeadline();
// Sets CommandDeadline() and --wait_for_ready on the call.
void SetDeadline(grpc::ClientContext* context);
std::string Lower(const std::string& s);
// --output=json.
bool JsonOutput();
// One JSON object on one line of stdout (proto field names, defaults
// included).
void PrintJson(const google::protobuf::Message& message);

// Quantizer service commands (quantizer_commands.cc).
int Quantize();
int WatchCommand();
int Jobs();
int Cancel();
int Artifacts();
// Inference service commands (inference_commands.cc).
int Load();
int Models();
int Info();
int Generate();
int Chat();
int Tokenize();

}  // namespace wq

#endif  // WQ_CLI_COMMON_H_
