// Cluster tests: "hosts" are forked processes of the test binary, each in a process
// group of its own (so that a test can SIGKILL or SIGSTOP a host with its pool), each
// running one body that returns a line of text through a pipe. Children never call
// doctest macros. The destructor kills and reaps every host still alive, even when a
// check failed; a watchdog bound makes a hung host a failed check, never a hung test.
#pragma once

#include <procshare/cluster.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <typeinfo>
#include <vector>

namespace procshare::test {

// A task result of 64 kB, made in microseconds and copied through the pool's slots: not
// worth sending through the engine (ResultTransfer::automatic), so every host computes
// again the results of the chunks other hosts completed.
struct Block {
  std::uint64_t item;
  char bytes[65536];
};

}  // namespace procshare::test

template <> struct procshare::transport_opt_in<procshare::test::Block> : std::true_type {};

namespace procshare::test {

inline Block block_of(std::uint64_t i) {
  Block b;
  b.item = i;
  std::memset(b.bytes, 'a' + static_cast<int>(i % 26), sizeof b.bytes);
  return b;
}
inline bool is_block_of(const Block& b, std::uint64_t i) {
  return b.item == i && b.bytes[0] == 'a' + static_cast<int>(i % 26) && b.bytes[sizeof b.bytes - 1] == b.bytes[0];
}

// The random source of a test process's fault moments (seeded once, differently each run).
inline std::mt19937& random_source() {
  static std::mt19937 source(std::random_device{}());
  return source;
}

// The job's meta hash as the engine holds it (empty if the job is gone).
inline std::map<std::string, std::string> meta_of(procshare::detail::Engine& engine, const std::string& job) {
  const auto reply = engine.command({"HGETALL", "psj:{" + job + "}:meta"});
  std::map<std::string, std::string> out;
  for (std::size_t i = 0; i + 1 < reply.elements.size(); i += 2) out[reply.elements[i].text] = reply.elements[i + 1].text;
  return out;
}

// Checks (in the test's process) that `job` ended done with each of its `items` items
// counted once, in `chunks` chunks.
inline void check_exact_totals(procshare::detail::Engine& engine, const std::string& job, std::uint64_t items,
                               std::uint64_t chunks) {
  const auto meta = meta_of(engine, job);
  CHECK(meta.at("state") == "done");
  CHECK(meta.at("done_items") == std::to_string(items));
  CHECK(meta.at("failed_items") == "0");
  CHECK(meta.at("done_chunks") == std::to_string(chunks));
  CHECK(engine.command({"BITCOUNT", "psj:{" + job + "}:done"}).integer == static_cast<long long>(chunks));
}

// The keys of the engine that never expire (a finished job's keys all do).
inline std::vector<std::string> keys_kept_for_ever(procshare::detail::Engine& engine) {
  std::vector<std::string> out;
  for (const auto& key : engine.command({"KEYS", "*"}).elements)
    if (engine.command({"PTTL", key.text}).integer < 0) out.push_back(key.text);
  return out;
}

class Hosts {
public:
  Hosts() = default;
  ~Hosts() {
    for (Host& h : hosts_) {
      if (h.pid > 0) {  // (not reaped: its group id cannot have been reused)
        ::kill(-h.group, SIGKILL);
        ::kill(-h.group, SIGCONT);
        ::waitpid(h.pid, nullptr, 0);
      }
      if (h.fd >= 0) ::close(h.fd);
    }
  }
  Hosts(const Hosts&) = delete;
  Hosts& operator=(const Hosts&) = delete;

  // Starts host `hosts().size()`: body(k) runs in a child; what it returns (or
  // "threw TYPE: WHAT") is its report.
  pid_t start(const std::function<std::string(int)>& body) {
    int fds[2];
    if (::pipe(fds) != 0) std::abort();
    const int k = static_cast<int>(hosts_.size());
    const pid_t parent = ::getpid();
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) std::abort();
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::close(fds[0]);
      std::string report;
      try {
        report = body(k);
      } catch (const std::exception& e) {
        report = std::string("threw ") + type_name(e) + ": " + e.what();
      } catch (...) {
        report = "threw something else";
      }
      std::size_t at = 0;
      while (at < report.size()) {
        const ssize_t n = ::write(fds[1], report.data() + at, report.size() - at);
        if (n <= 0) break;
        at += static_cast<std::size_t>(n);
      }
      ::_exit(0);
    }
    ::setpgid(pid, pid);  // (also here: no race with a kill right after start)
    ::close(fds[1]);
    hosts_.push_back(Host{pid, pid, fds[0], {}, false});
    return pid;
  }

  pid_t pid(int k) const { return hosts_.at(static_cast<std::size_t>(k)).group; }
  // How many hosts were started.
  int count() const { return static_cast<int>(hosts_.size()); }
  // Whether no process is left in any host's process group (the hosts, their pools'
  // supervisors and workers), waiting up to `timeout` for them to go.
  bool all_gone(std::chrono::milliseconds timeout = std::chrono::seconds(10)) const {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      bool left = false;
      for (const Host& h : hosts_) left = left || ::kill(-h.group, 0) == 0;
      if (!left) return true;
      if (std::chrono::steady_clock::now() > until) return false;
      ::usleep(10000);
    }
  }
  // Signals host k's whole process group (the host, its pool's supervisor and workers).
  void signal_group(int k, int sig) { ::kill(-pid(k), sig); }
  // Signals host k's own process only (its pool's workers go on).
  void signal_host(int k, int sig) { ::kill(pid(k), sig); }

  // Waits for every host's report, at most `limit` in all; a host that has not reported
  // by then is killed and reported as "hung".
  std::vector<std::string> reports(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    for (Host& h : hosts_) {
      while (!h.ended) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
          h.text = "hung";
          break;
        }
        pollfd p{h.fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
        char buffer[4096];
        const ssize_t n = ::read(h.fd, buffer, sizeof buffer);
        if (n > 0) h.text.append(buffer, static_cast<std::size_t>(n));
        else h.ended = true;
      }
      if (h.pid > 0) {
        if (!h.ended) ::kill(-h.pid, SIGKILL);
        int status = 0;
        ::waitpid(h.pid, &status, 0);
        if (WIFSIGNALED(status) && h.text.empty()) h.text = "killed by signal " + std::to_string(WTERMSIG(status));
        h.pid = -1;
      }
    }
    std::vector<std::string> out;
    for (const Host& h : hosts_) out.push_back(h.text);
    return out;
  }

private:
  static const char* type_name(const std::exception& e) {
    // Enough to tell the procshare errors apart in a report.
    if (dynamic_cast<const procshare::JobLost*>(&e)) return "JobLost";
    if (dynamic_cast<const procshare::JobMismatch*>(&e)) return "JobMismatch";
    if (dynamic_cast<const procshare::EngineUnavailable*>(&e)) return "EngineUnavailable";
    if (dynamic_cast<const procshare::AuthFailed*>(&e)) return "AuthFailed";
    if (dynamic_cast<const procshare::PermissionDenied*>(&e)) return "PermissionDenied";
    if (dynamic_cast<const procshare::Stopped*>(&e)) return "Stopped";
    if (dynamic_cast<const procshare::TaskError*>(&e)) return "TaskError";
    if (dynamic_cast<const procshare::WorkerDied*>(&e)) return "WorkerDied";
    if (dynamic_cast<const procshare::InvalidArgument*>(&e)) return "InvalidArgument";
    return typeid(e).name();
  }
  struct Host {
    pid_t pid;    // -1 once reaped
    pid_t group;  // its process group (= its first pid)
    int fd;
    std::string text;
    bool ended;
  };
  std::vector<Host> hosts_;
};

}  // namespace procshare::test
