// Real binaries run by tests. A server: 127.0.0.1 with port 0, the port
// read from --port_file, stderr to a log file.
#ifndef WQ_TESTS_SERVER_PROCESS_H_
#define WQ_TESTS_SERVER_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace wq::e2e {

// One server binary running as a child process on 127.0.0.1 with port 0,
// stderr to a log file in `dir`; killed on destruction if still running.
class ServerProcess {
 public:
  // `listen` is the --listen address; port 0 picks a free one.
  ServerProcess(std::string name, std::string binary, std::vector<std::string> args,
                std::string dir, std::string listen = "127.0.0.1:0");
  ~ServerProcess();
  // The bound port, once the port file appears; 0 (and a test failure) otherwise.
  int WaitForPort(std::chrono::seconds timeout);
  // SIGTERM; the exit status, or -1 when it did not exit in time.
  int Stop(std::chrono::seconds timeout);
  // SIGTERM without waiting; Wait then gives the exit status as Stop does.
  void Terminate();
  int Wait(std::chrono::seconds timeout);
  std::string Log() const;

 private:
  std::string name_, dir_, port_file_, log_file_;
  pid_t pid_ = -1;
};

// A command run to its end (posix_spawn, no shell), its output captured.
struct CommandResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string out;
  std::string err;
};
CommandResult RunCommand(std::vector<std::string> argv, const std::string& scratch_dir);

}  // namespace wq::e2e

#endif  // WQ_TESTS_SERVER_PROCESS_H_
