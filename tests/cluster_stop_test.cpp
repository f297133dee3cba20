// A stop or a better find_first match reaches every host's running tasks in milliseconds,
// through each host's agent (lib/detail/cluster_agent.hpp), not at the host's next
// engine call: the hosts here renew their leases only every 10 s, and their tasks run
// until they see stop_requested(), so without the agent nothing would end for seconds.
// Each case runs hosts (forked processes, one worker each) against a private
// redis-server; the moment of the stop and the moment each host's task saw it are
// written (CLOCK_MONOTONIC, the same in every process) to a page the test maps before
// it forks.
#include "cluster_hosts.hpp"
#include "redis_server.hpp"

#include <procshare/cluster.hpp>
#include <procshare/cluster_report.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>
#include <vector>

using namespace procshare;
using procshare::detail::Engine;
using procshare::test::Hosts;
using procshare::test::PasswordEnv;
using procshare::test::RedisServer;
using namespace std::chrono_literals;

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// When the stop was asked for, and when a task of each host first saw stop_requested().
struct Moments {
  std::atomic<std::int64_t> origin;
  std::atomic<std::int64_t> seen[3];
};
Moments* moments = nullptr;  // (a shared page, mapped before the hosts fork)
int this_host = -1;          // (set in each host before its pool forks the workers)
bool stopper = false;        // (this host's task asks for the stop)

class SharedMoments {
public:
  SharedMoments() {
    void* page = ::mmap(nullptr, sizeof(Moments), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    moments = new (page) Moments{};
  }
  ~SharedMoments() {
    ::munmap(moments, sizeof(Moments));
    moments = nullptr;
  }
  SharedMoments(const SharedMoments&) = delete;
  SharedMoments& operator=(const SharedMoments&) = delete;
};

// Runs until the job is stopped (at most 20 s), and notes when this host saw it; the
// stopper's task asks for the stop 500 ms in.
std::uint64_t until_stopped(std::uint64_t i) {
  const auto start = std::chrono::steady_clock::now();
  if (stopper) {
    ::usleep(500000);
    moments->origin.store(now_ns());
    procshare::request_stop();
  }
  while (!procshare::stop_requested() && std::chrono::steady_clock::now() - start < 20s) ::usleep(100);
  std::int64_t unseen = 0;
  moments->seen[this_host].compare_exchange_strong(unseen, now_ns());
  return i;
}

// find_first: item 50 matches (after 300 ms); items of the second chunk on run until
// they are told to stop (at most 20 s).
bool match_at_50(std::uint64_t i) {
  if (i == 50) {
    ::usleep(300000);
    return true;
  }
  if (i < 100) return false;
  const auto start = std::chrono::steady_clock::now();
  while (!procshare::stop_requested() && std::chrono::steady_clock::now() - start < 20s) ::usleep(100);
  return false;
}

// Leases renewed only every 10 s: a stop that waited for a heartbeat would take seconds.
ClusterOptions slow_beats(const RedisServer& server, const std::string& job, int k) {
  return ClusterOptions{.url = server.url(), .job = job, .host = "h" + std::to_string(k), .lease = 30000ms,
                        .flush = 10000ms};
}

double ms_between(std::int64_t from, std::int64_t to) { return static_cast<double>(to - from) / 1e6; }

}  // namespace

TEST_SUITE("process") {

TEST_CASE("a stop from any origin reaches every host's running tasks in milliseconds, not at its next heartbeat") {
  RedisServer server;
  PasswordEnv env(server.password());
  SharedMoments shared;
  // Two hosts run tasks that end only when stopped; `origin` stops the job from host 0
  // (or from outside) once both run; every host's get() must throw Stopped naming it.
  const auto run = [&](const std::string& job, const std::string& origin, const std::string& named) {
    moments->origin = 0;
    for (auto& seen : moments->seen) seen = 0;
    Hosts hosts;
    for (int k = 0; k < 2; ++k)
      hosts.start([&](int me) {
        this_host = me;
        stopper = me == 0 && origin == "request_stop";
        Pool pool({.workers = 1});
        Cluster cluster(slow_beats(server, job, me));
        auto work = cluster.map_async(pool, Range{0, 256}, until_stopped);
        if (me == 0 && origin == "cancel") {
          work.wait_for(500ms);
          moments->origin.store(now_ns());
          work.cancel();
        }
        try {
          work.get();
          return std::string("no throw");
        } catch (const Stopped& e) {
          return std::string(e.what());
        }
      });
    if (origin == "outside") {
      // (as procshare-ctl cluster stop does, once both hosts run; it waits until both
      // hosts' agents said they brought the stop to their chunks)
      ::usleep(500000);
      moments->origin.store(now_ns());
      const ClusterStopResult stop =
          stop_cluster_job({.url = server.url()}, job, {.origin = "the test, from outside"});
      CHECK(stop.stopped);
      CHECK(stop.acknowledged == std::vector<std::string>{"h0", "h1"});
      CHECK(stop.unacknowledged.empty());
      MESSAGE("both hosts acknowledged the stop ", stop.took.count(), " ms after it");
      CHECK(stop.took < 1000ms);
    }
    const auto reports = hosts.reports(60s);
    for (const std::string& report : reports) {
      INFO(report);
      CHECK(report.find("stopped by " + named) != std::string::npos);
    }
    const std::int64_t origin_at = moments->origin.load();
    REQUIRE(origin_at > 0);
    for (int k = 0; k < 2; ++k) {
      const std::int64_t seen = moments->seen[k].load();
      REQUIRE(seen > 0);
      MESSAGE(origin, ": host ", k, "'s task saw the stop ", ms_between(origin_at, seen), " ms after it");
      // (its next heartbeat would have been ~9.5 s later)
      CHECK(ms_between(origin_at, seen) < 1000.0);
    }
    CHECK(hosts.all_gone());
  };
  SUBCASE("cancel() on another host") { run("by-cancel", "cancel", "cancel() on h0"); }
  SUBCASE("a task's request_stop() on another host") { run("by-task", "request_stop", "a task's request_stop()"); }
  SUBCASE("the engine's stop, from outside any host") { run("by-outside", "outside", "the test, from outside"); }
}

TEST_CASE("find_first: a match on one host stops another host's chunk above it in milliseconds") {
  RedisServer server;
  PasswordEnv env(server.password());
  Hosts hosts;
  for (int k = 0; k < 2; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      ClusterOptions options = slow_beats(server, "first", me);
      options.chunk = 100;
      options.prefetch = 0;
      Cluster cluster(options);
      const auto start = std::chrono::steady_clock::now();
      const auto found = cluster.find_first(pool, Range{0, 1000}, match_at_50);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!found || found->first != 50) return std::string("wrong match");
      return std::string(seconds < 3.0 ? "ok" : "slow: " + std::to_string(seconds) + " s");
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  CHECK(hosts.all_gone());
}

TEST_CASE("a host's agent ends with its job: no process is left once the pool is gone") {
  RedisServer server;
  PasswordEnv env(server.password());
  Hosts hosts;
  hosts.start([&](int me) {
    {
      Pool pool({.workers = 1});
      Cluster cluster(slow_beats(server, "lone", me));
      // (200 ms: long enough for the agent to be forked, 50 ms in)
      const auto got = cluster.map(pool, Range{0, 200}, [](std::uint64_t i) {
        ::usleep(1000);
        return i;
      });
      if (got.size() != 200) return std::string("wrong results");
    }
    errno = 0;
    const pid_t left = ::waitpid(-1, nullptr, WNOHANG);
    return std::string(left == -1 && errno == ECHILD ? "ok" : "a child is left: " + std::to_string(left));
  });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  CHECK(hosts.all_gone());
}

}  // TEST_SUITE
