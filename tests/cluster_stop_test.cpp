// Each host's agent (lib/detail/cluster_agent.hpp): a stop or a better find_first match
// reaches every host's running tasks in milliseconds, not at the host's next engine call
// (the hosts here renew their leases only every 10 s, and their tasks run until they see
// stop_requested(), so without the agent nothing would end for seconds); a host whose
// program is busy outside get() keeps the leases of the chunks its pool computes; a chunk
// whose lease went to another host is stopped on its host at once.
// Each case runs hosts (forked processes, one worker each) against a private
// redis-server; the moment of the stop and the moment each host's task saw it are
// written (CLOCK_MONOTONIC, the same in every process) to a page the test maps before
// it forks.
#include "../lib/detail/cluster_scripts.hpp"
#include "cluster_hosts.hpp"
#include "redis_server.hpp"

#include <procshare/cluster.hpp>
#include <procshare/cluster_report.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
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

// When the stop was asked for, when a task of each host first saw stop_requested(), and
// whether a task of each host has started.
struct Moments {
  std::atomic<std::int64_t> origin;
  std::atomic<std::int64_t> seen[3];
  std::atomic<int> started[3];
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

// Waits (at most 20 s) until a task of every one of the first `hosts` hosts started.
bool all_started(int hosts) {
  const auto until = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    bool all = true;
    for (int k = 0; k < hosts; ++k) all = all && moments->started[k].load() != 0;
    if (all) return true;
    if (std::chrono::steady_clock::now() > until) return false;
    ::usleep(1000);
  }
}

// Runs until the job is stopped (at most 20 s), and notes when this host saw it; the
// stopper's task asks for the stop once a task of each host runs.
std::uint64_t until_stopped(std::uint64_t i) {
  const auto start = std::chrono::steady_clock::now();
  moments->started[this_host].store(1);
  if (stopper) {
    all_started(2);
    moments->origin.store(now_ns());
    procshare::request_stop();
  }
  while (!procshare::stop_requested() && std::chrono::steady_clock::now() - start < 20s) ::usleep(100);
  std::int64_t unseen = 0;
  moments->seen[this_host].compare_exchange_strong(unseen, now_ns());
  return i;
}

// find_first: item 50 matches, once an item of a later chunk runs (on the other host);
// those run until they are told to stop (at most 20 s).
bool match_at_50(std::uint64_t i) {
  if (i == 50) {
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (moments->started[2].load() == 0 && std::chrono::steady_clock::now() < until) ::usleep(1000);
    return true;
  }
  if (i < 100) return false;
  moments->started[2].store(1);
  const auto start = std::chrono::steady_clock::now();
  while (!procshare::stop_requested() && std::chrono::steady_clock::now() - start < 20s) ::usleep(100);
  return false;
}

// 100 ms an item.
std::uint64_t tenth_of_a_second(std::uint64_t i) {
  ::usleep(100000);
  return i;
}

// Host 0's items run until they are told to stop (at most 5 s), and note when host 0 saw
// it; host 1's take 2 s.
void long_on_host_0(std::uint64_t) {
  moments->started[this_host].store(1);
  if (this_host != 0) {
    ::usleep(2000000);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  while (!procshare::stop_requested() && std::chrono::steady_clock::now() - start < 5s) ::usleep(100);
  std::int64_t unseen = 0;
  moments->seen[0].compare_exchange_strong(unseen, now_ns());
}

// Leases renewed only every 10 s: a stop that waited for a heartbeat would take seconds.
ClusterOptions slow_beats(const RedisServer& server, const std::string& job, int k) {
  return ClusterOptions{.url = server.url(), .job = job, .host = "h" + std::to_string(k), .lease = 30000ms,
                        .flush = 10000ms};
}

double ms_between(std::int64_t from, std::int64_t to) { return static_cast<double>(to - from) / 1e6; }

// This process's children, as /proc says: "PID PID ".
std::string children_of_this_process() {
  std::ifstream in("/proc/self/task/" + std::to_string(::getpid()) + "/children");
  std::string text;
  std::getline(in, text);
  return text;
}

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
    for (auto& started : moments->started) started = 0;
    Hosts hosts;
    for (int k = 0; k < 2; ++k)
      hosts.start([&](int me) {
        this_host = me;
        stopper = me == 0 && origin == "request_stop";
        Pool pool({.workers = 1});
        Cluster cluster(slow_beats(server, job, me));
        auto work = cluster.map_async(pool, Range{0, 256}, until_stopped);
        if (me == 0 && origin == "cancel") {
          if (!all_started(2)) return std::string("the hosts' tasks did not start");
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
    if (origin == "a stop script alone") {
      // (a stopper that died between the stop and its second call: the keys have no
      // expiry until the hosts' agents acknowledge)
      REQUIRE(all_started(2));
      moments->origin.store(now_ns());
      Engine engine({.url = server.url()});
      const procshare::detail::EngineReply reply = engine.eval(procshare::detail::script(procshare::detail::scripts::stop),
                                            procshare::detail::job_keys(job), {"", "a stop script alone"});
      REQUIRE(reply.elements.size() == 2);
      CHECK(reply.elements[0].text == "ok");
    }
    if (origin == "outside") {
      // (as procshare-ctl cluster stop does, once both hosts run; it waits until both
      // hosts' agents said they brought the stop to their chunks)
      REQUIRE(all_started(2));
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
    // (the stop made the job's keys expire: with its second call, or the agents did)
    Engine engine({.url = server.url()});
    CHECK(procshare::test::keys_kept_for_ever(engine).empty());
    CHECK(engine.command({"PTTL", "psj:{" + job + "}:meta"}).integer > 0);
  };
  SUBCASE("cancel() on another host") { run("by-cancel", "cancel", "cancel() on h0"); }
  SUBCASE("a task's request_stop() on another host") { run("by-task", "request_stop", "a task's request_stop()"); }
  SUBCASE("the engine's stop, from outside any host") { run("by-outside", "outside", "the test, from outside"); }
  SUBCASE("a stop whose caller died before its second call: the agents make the keys expire") {
    run("by-script", "a stop script alone", "a stop script alone");
  }
}

TEST_CASE("find_first: a match on one host stops another host's chunk above it in milliseconds") {
  RedisServer server;
  PasswordEnv env(server.password());
  SharedMoments shared;
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
      auto work = cluster.map_async(pool, Range{0, 200}, [](std::uint64_t i) {
        ::usleep(1000);
        return i;
      });
      // (map_async forks the agent at once: two children now, the pool's supervisor and it)
      const std::string children = children_of_this_process();
      if (std::count(children.begin(), children.end(), ' ') != 2) return "children: '" + children + "'";
      if (work.get().size() != 200) return std::string("wrong results");
    }
    errno = 0;
    const pid_t left = ::waitpid(-1, nullptr, WNOHANG);
    return std::string(left == -1 && errno == ECHILD ? "ok" : "a child is left: " + std::to_string(left));
  });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  CHECK(hosts.all_gone());
}

TEST_CASE("a host whose program is busy outside get() keeps the leases of the chunks its pool computes") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  Hosts hosts;
  for (int k = 0; k < 2; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      // (a chunk of 20 items of 100 ms: 2 s, longer than the 1.5 s lease)
      ClusterOptions options{.url = server.url(), .job = "busy", .host = "h" + std::to_string(me),
                             .lease = 1500ms, .flush = 500ms, .chunk = 20, .prefetch = 0};
      Cluster cluster(options);
      auto work = cluster.map_async(pool, Range{0, 40}, tenth_of_a_second);
      if (me == 0) ::usleep(2300000);  // (elsewhere until its chunk is computed, and a bit)
      const std::vector<std::uint64_t> got = work.get();
      for (std::uint64_t i = 0; i < 40; ++i)
        if (got.at(i) != i) return "wrong result at " + std::to_string(i);
      return std::string("ok");
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  const auto meta = procshare::test::meta_of(engine, "busy");
  CHECK(meta.at("done_items") == "40");
  CHECK(meta.at("redelivered") == "0");  // (without the agent's renewals: host 0's chunk went to host 1)
  CHECK(meta.at("fenced") == "0");
  CHECK(hosts.all_gone());
}

TEST_CASE("a chunk whose lease went to another host is stopped on its host at once, its program outside get()") {
  RedisServer server;
  PasswordEnv env(server.password());
  SharedMoments shared;
  Engine engine({.url = server.url()});
  Hosts hosts;
  for (int k = 0; k < 2; ++k)
    hosts.start([&](int me) {
      this_host = me;
      Pool pool({.workers = 1});
      ClusterOptions options{.url = server.url(), .job = "taken", .host = "h" + std::to_string(me),
                             .lease = 600ms, .flush = 200ms, .chunk = 1, .prefetch = 0};
      Cluster cluster(options);
      auto work = cluster.map_async(pool, Range{0, 2}, long_on_host_0);
      if (me == 0) ::usleep(5000000);  // (elsewhere: only its agent can tell its pool)
      work.get();
      return std::string("ok");
    });
  // Host 0 (its program, agent and pool) frozen past its lease: host 1, done with its own
  // item at 2 s, takes host 0's; host 0 goes on, and its agent learns at its next renewal
  // that the chunk is another's.
  REQUIRE(all_started(2));
  hosts.signal_group(0, SIGSTOP);
  ::usleep(2500000);
  const std::int64_t resumed = now_ns();
  hosts.signal_group(0, SIGCONT);
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  const std::int64_t seen = moments->seen[0].load();
  REQUIRE(seen > 0);
  MESSAGE("host 0's task saw the stop ", ms_between(resumed, seen), " ms after it resumed");
  CHECK(ms_between(resumed, seen) < 1000.0);  // (without the agent: 2.5 s later, when its program calls get())
  const auto meta = procshare::test::meta_of(engine, "taken");
  CHECK(meta.at("done_items") == "2");
  CHECK(std::stoull(meta.at("redelivered")) >= 1);
  CHECK(std::stoull(meta.at("fenced")) >= 1);  // (host 0's renewal, refused)
  CHECK(hosts.all_gone());
}

}  // TEST_SUITE
