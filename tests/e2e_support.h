// Shared state of the end-to-end test: both real server binaries running as
// child processes; each service's tests live in their own file.
#ifndef WQ_TESTS_E2E_SUPPORT_H_
#define WQ_TESTS_E2E_SUPPORT_H_

#include <string>

#include "tests/server_process.h"

namespace wq::e2e {

struct Servers {
  std::string quantizer;  // "127.0.0.1:port"
  std::string inference;
  std::string model_root;
  std::string artifact_root;
  std::string quantizer_binary;
  std::string inference_binary;
  std::string dir;  // scratch: port files and logs
};

// Set up by the global environment before any test runs.
const Servers& GetServers();

// The id of the stories260K int4_clip/sym/g32/RTN artifact, quantized through
// the quantizer service on first use (defined in e2e_quantizer_test.cc).
std::string QuantizedArtifactId();

}  // namespace wq::e2e

#endif  // WQ_TESTS_E2E_SUPPORT_H_
