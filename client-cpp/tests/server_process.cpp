#include "server_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

// CMake points this at the repository's .venv; elsewhere (Bazel) INFERENTIAL_PYTHON is used.
#ifndef INFERENTIAL_DEFAULT_PYTHON
#define INFERENTIAL_DEFAULT_PYTHON "python3"
#endif

namespace testing_support {

namespace {

bool port_accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string python() {
  const char* env = std::getenv("INFERENTIAL_PYTHON");
  return env && *env ? env : INFERENTIAL_DEFAULT_PYTHON;
}

}  // namespace

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::string> test_models() {
  return {"--model", "echo=inferential.models.testing:Echo",       "--model",
          "noop=inferential.models.testing:NoOp",                  "--model",
          "failing=inferential.models.testing:Failing",            "--model",
          "sleep=inferential.models.testing:Sleep"};
}

ServerProcess::ServerProcess(std::vector<std::string> extra, int port)
    : extra_(std::move(extra)), port_(port ? port : free_port()) {}

ServerProcess ServerProcess::script(std::string code, int port) {
  ServerProcess p({}, port);
  p.script_ = std::move(code);
  return p;
}

ServerProcess::~ServerProcess() { stop(); }

bool ServerProcess::start() {
  if (pid_ > 0) return true;
  std::vector<std::string> args = {python(), "-m", "inferential.cli", "serve", "--bind", endpoint(),
                                   "--log-level", "WARNING"};
  args.insert(args.end(), extra_.begin(), extra_.end());
  if (!script_.empty()) args = {python(), "-c", script_, endpoint()};
  pid_ = ::fork();
  if (pid_ == 0) {
    // The server's logs go to stderr: keep them out of the test output unless asked.
    if (!std::getenv("INFERENTIAL_TEST_SERVER_LOGS")) {
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (pid_ < 0) return false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;  // it exited
    }
    if (port_accepts(port_)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop();
  return false;
}

void ServerProcess::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  pid_ = -1;
}

}  // namespace testing_support
