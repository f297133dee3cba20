// Test support: unique segment names that are always removed, real child processes,
// and pipe-based ordering between processes. Children never call doctest macros: they
// report through their exit code.
#pragma once

#include <procshare/procshare.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace procshare::test {

// A segment name unique to this process and call: "ps-test-<pid>-<n>-<label>". The name
// is removed from /dev/shm when the object is destroyed, whatever the test did and
// whatever file it names (shm_unlink: Segment::remove refuses files that are not
// segments).
class SegmentName {
public:
  explicit SegmentName(std::string_view label = "t") {
    static std::atomic<int> counter{0};
    name_ = "ps-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
            std::string(label);
  }
  ~SegmentName() {
    if (::getpid() == owner_) ::shm_unlink(("/" + name_).c_str());
  }
  SegmentName(const SegmentName&) = delete;
  SegmentName& operator=(const SegmentName&) = delete;
  const std::string& str() const noexcept { return name_; }
  operator std::string_view() const noexcept { return name_; }

private:
  std::string name_;
  pid_t owner_ = ::getpid();
};

// Forks a child that runs fn() and exits 0, or 1 if fn threw (message on stderr).
// fn may also _exit with its own code.
template <class F> pid_t run_child(F&& fn) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    int code = 0;
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
      code = 1;
    } catch (...) {
      code = 1;
    }
    ::_exit(code);
  }
  return pid;
}

// How a child ended.
struct ChildStatus {
  bool exited = false;   // exited normally
  int code = -1;         // exit code if exited
  int signal = 0;        // terminating signal if killed
  bool timed_out = false;  // the watchdog had to kill it
  bool ok() const { return exited && code == 0; }
};

// Waits for `pid` at most `timeout`; past it, SIGKILLs and reaps it (timed_out = true).
inline ChildStatus wait_child(pid_t pid,
                              std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  ChildStatus status;
  int raw = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &raw, WNOHANG);
    if (r == pid) break;
    if (r < 0) return status;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &raw, 0);
      status.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (WIFEXITED(raw)) {
    status.exited = true;
    status.code = WEXITSTATUS(raw);
  } else if (WIFSIGNALED(raw)) {
    status.signal = WTERMSIG(raw);
  }
  return status;
}

// A one-shot signal between processes over a pipe: notify() in one, wait() in the other.
class PipeSignal {
public:
  PipeSignal() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) std::abort();
  }
  ~PipeSignal() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  PipeSignal(const PipeSignal&) = delete;
  PipeSignal& operator=(const PipeSignal&) = delete;
  void notify() const {
    const char byte = 1;
    if (::write(fds_[1], &byte, 1) != 1) std::abort();
  }
  // True if notified within `timeout`.
  bool wait(std::chrono::milliseconds timeout = std::chrono::seconds(30)) const {
    pollfd p{fds_[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
    char byte;
    return ::read(fds_[0], &byte, 1) == 1;
  }

private:
  int fds_[2];
};

// Whether /dev/shm holds `name`.
inline bool shm_exists(std::string_view name) {
  return ::access(("/dev/shm/" + std::string(name)).c_str(), F_OK) == 0;
}

}  // namespace procshare::test

namespace procshare::test {

// Waits until process `pid` sleeps in a futex wait (as /proc says), at most `timeout`.
// Lets a test notify exactly the waiters that are already asleep, without sleeps.
inline bool wait_until_sleeping(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string wchan = "/proc/" + std::to_string(pid) + "/wchan";
  while (std::chrono::steady_clock::now() < deadline) {
    char buffer[64] = {};
    if (FILE* f = std::fopen(wchan.c_str(), "r")) {
      const std::size_t n = std::fread(buffer, 1, sizeof buffer - 1, f);
      std::fclose(f);
      if (n > 0 && std::string_view(buffer, n).find("futex") != std::string_view::npos) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

}  // namespace procshare::test

namespace procshare::test {

// Whether process `pid` is gone (or a zombie nobody has reaped yet).
inline bool process_gone(int pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return true;
  char buffer[512] = {};
  const std::size_t n = std::fread(buffer, 1, sizeof buffer - 1, f);
  std::fclose(f);
  const std::string_view text(buffer, n);
  const auto paren = text.rfind(')');
  return paren != std::string_view::npos && paren + 2 < text.size() && text[paren + 2] == 'Z';
}

// Waits up to `timeout` for every pid in `pids` to be gone.
inline bool all_gone(const std::vector<int>& pids, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (std::all_of(pids.begin(), pids.end(), process_gone)) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace procshare::test

namespace procshare::test {

// Waits (at most 10 s) until this process runs one thread: a joined thread can linger in
// /proc for a moment, and Pool() and Process::start() refuse to fork a threaded process.
inline void wait_single_threaded() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    std::ifstream in("/proc/self/status");
    std::string line;
    int threads = 0;
    while (std::getline(in, line))
      if (line.rfind("Threads:", 0) == 0) threads = std::atoi(line.c_str() + 8);
    if (threads == 1 || std::chrono::steady_clock::now() > deadline) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace procshare::test
