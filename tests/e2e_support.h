// Shared state of the end-to-end test: both real server binaries running as
// child processes; each service's tests live in their own file.
#ifndef WQ_TESTS_E2E_SUPPORT_H_
#define WQ_TESTS_E2E_SUPPORT_H_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

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

// One server binary running as a child process on 127.0.0.1 with port 0
// (unless `args` has a --listen of its own), stderr to a log file in `dir`; killed on destruction if still running.
class ServerProcess {
 public:
  ServerProcess(std::string name, std::string binary, std::vector<std::string> args,
                std::string dir);
  ~ServerProcess();
  // The bound port, once the port file appears; 0 (and a test failure) otherwise.
  int WaitForPort(std::chrono::seconds timeout);
  // SIGTERM; the exit status, or -1 when it did not exit in time.
  int Stop(std::chrono::seconds timeout);
  std::string Log() const;

 private:
  std::string name_, dir_, port_file_, log_file_;
  pid_t pid_ = -1;
};

// Set up by the global environment before any test runs.
const Servers& GetServers();

// The id of the stories260K int4_clip/sym/g32/RTN artifact, quantized through
// the quantizer service on first use (defined in e2e_quantizer_test.cc).
std::string QuantizedArtifactId();

}  // namespace wq::e2e

#endif  // WQ_TESTS_E2E_SUPPORT_H_
