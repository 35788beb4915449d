// The real Python server as a child process of a test.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace testing_support {

// A free TCP port on 127.0.0.1 (bound to port 0 and released; the server binds it next).
int free_port();

class ServerProcess {
 public:
  // `extra` are appended to `python -m inferential.cli serve --bind tcp://127.0.0.1:PORT`.
  explicit ServerProcess(std::vector<std::string> extra, int port = 0);
  // Any Python program instead of the server: `python -c code ENDPOINT`, ready when the port accepts.
  static ServerProcess script(std::string code, int port);
  ~ServerProcess();
  ServerProcess(ServerProcess&& other) noexcept
      : extra_(std::move(other.extra_)), script_(std::move(other.script_)), port_(other.port_), pid_(other.pid_) {
    other.pid_ = -1;
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Starts it and waits until the port accepts connections (false on failure).
  bool start();
  void stop();
  int port() const { return port_; }
  std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

 private:
  std::vector<std::string> extra_;
  std::string script_;
  int port_;
  pid_t pid_ = -1;
};

// The standard test models, as --model arguments.
std::vector<std::string> test_models();

}  // namespace testing_support
