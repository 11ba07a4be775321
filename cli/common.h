// Helpers shared by wqctl's commands (one file per service's commands).
#ifndef WQ_CLI_COMMON_H_
#define WQ_CLI_COMMON_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, quantizer);
ABSL_DECLARE_FLAG(std::string, inference);
ABSL_DECLARE_FLAG(int, timeout_s);
ABSL_DECLARE_FLAG(std::string, model);

namespace wq {

inline constexpr int kOk = 0;
inline constexpr int kFailed = 1;
inline constexpr int kUsage = 2;

// Prints the message and returns kUsage.
int UsageError(const std::string& message);
// Prints what failed and why, and returns kFailed.
int RpcError(const char* what, const grpc::Status& status);
// --server, else --inference or --quantizer.
std::shared_ptr<grpc::Channel> Connect(bool inference);
void SetDeadline(grpc::ClientContext* context);
std::string Lower(const std::string& s);

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
