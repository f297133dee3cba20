// Cluster faults, each real: a host SIGKILLed while it holds a chunk (redelivery), a host
// frozen past its lease (its late completion is fenced), the server frozen briefly (the
// job completes) and for long (EngineUnavailable on every host within the bound), the
// server killed and restarted empty (JobLost on every host) and with append-only
// persistence (the job completes). Each asserts exact totals in the engine, the results
// on every surviving host, and that no host process is left. The fault's moment is drawn
// over the job's chunks (after 1 to ~half of them are done), and it waits until the
// victim holds a lease, so the fault lands mid-work.
#include "cluster_hosts.hpp"
#include "redis_server.hpp"

#include <procshare/cluster.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace procshare;
using procshare::detail::Engine;
using procshare::test::Block;
using procshare::test::block_of;
using procshare::test::Hosts;
using procshare::test::is_block_of;
using procshare::test::meta_of;
using procshare::test::PasswordEnv;
using procshare::test::random_source;
using procshare::test::RedisServer;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// Matches item `at` and, above it, every 97th item: a find_first whose answer is `at`.
bool matches_slowly(std::uint64_t i, std::uint64_t at) {
  ::usleep(1000);
  return i == at || (i > at && i % 97 == 0);
}

std::uint64_t square_slowly(std::uint64_t i, int micros) {
  ::usleep(static_cast<useconds_t>(micros));
  return i * i;
}

constexpr std::uint64_t items = 3000;
constexpr std::uint64_t chunk = 50;  // 60 chunks of 50 ms

// Waits until `joined` hosts joined (0: any), at least `chunks` chunks are done and host
// `host` holds a lease; returns false after 30 s or if the job ended first.
bool wait_mid_work(Engine& engine, const std::string& job, std::uint64_t chunks, const std::string& host,
                   long long joined = 3) {
  const auto until = Clock::now() + 30s;
  while (Clock::now() < until) {
    const auto meta = meta_of(engine, job);
    if (meta.count("state") && meta.at("state") != "running") return false;
    if (meta.count("done_chunks") && std::stoull(meta.at("done_chunks")) >= chunks &&
        (joined == 0 || engine.command({"HLEN", "psj:{" + job + "}:hosts"}).integer == joined))
      for (const auto& token : engine.command({"HVALS", "psj:{" + job + "}:owner"}).elements)
        if (token.text.find(":" + host + ":") != std::string::npos) return true;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

// A host that runs the job and checks every result: "ok", or what went wrong.
std::string run_and_check(const ClusterOptions& options) {
  Pool pool({.workers = 1});
  Cluster cluster(options);
  const std::vector<std::uint64_t> got = cluster.map(pool, Range{0, items}, square_slowly, 1000);
  for (std::uint64_t i = 0; i < items; ++i)
    if (got.at(i) != i * i) return "wrong result at " + std::to_string(i);
  return "ok";
}

ClusterOptions options_for(const RedisServer& server, const std::string& job, int k, std::chrono::milliseconds lease) {
  return ClusterOptions{.url = server.url(), .job = job, .host = "h" + std::to_string(k), .lease = lease,
                        .flush = 50ms, .chunk = chunk, .command_timeout = 300ms};
}

void check_exact(Engine& engine, const std::string& job) {
  procshare::test::check_exact_totals(engine, job, items, items / chunk);
  CHECK(procshare::test::keys_kept_for_ever(engine).empty());  // (a finished job's keys expire)
}

}  // namespace

TEST_SUITE("process") {

TEST_CASE("a host SIGKILLed while it holds a chunk: the chunk is redelivered, totals exact") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  for (int round = 0; round < 3; ++round) {
    const std::string job = "killed-" + std::to_string(round);
    const std::uint64_t after = std::uniform_int_distribution<std::uint64_t>(1, 25)(random_source());
    INFO("round ", round, ": kill after ", after, " chunks");
    Hosts hosts;
    for (int k = 0; k < 3; ++k) hosts.start([&](int me) { return run_and_check(options_for(server, job, me, 400ms)); });
    REQUIRE(wait_mid_work(engine, job, after, "h1"));
    hosts.signal_group(1, SIGKILL);
    const auto reports = hosts.reports(60s);
    CHECK(reports[0] == "ok");
    CHECK(reports[1] == "killed by signal 9");
    CHECK(reports[2] == "ok");
    check_exact(engine, job);
    CHECK(std::stoull(meta_of(engine, job).at("redelivered")) >= 1);
    CHECK(hosts.all_gone());
  }
}

TEST_CASE("a host storm: hosts SIGKILLed at random moments while new ones join, totals exact") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  for (int round = 0; round < 2; ++round) {
    const std::string job = "storm-" + std::to_string(round);
    // Three kills, each once at least `after` chunks are done (drawn over the job's 60
    // chunks) and the victim (a live host drawn at random) holds a lease; each victim is
    // replaced by a new host that joins the running job.
    std::vector<std::uint64_t> after;
    for (int k = 0; k < 3; ++k) after.push_back(std::uniform_int_distribution<std::uint64_t>(1, 40)(random_source()));
    std::sort(after.begin(), after.end());
    INFO("round ", round, ": kills after ", after[0], ", ", after[1], ", ", after[2], " chunks");
    Hosts hosts;
    std::vector<int> live;
    const auto start_host = [&] {
      hosts.start([&](int me) { return run_and_check(options_for(server, job, me, 300ms)); });
      live.push_back(hosts.count() - 1);
    };
    for (int k = 0; k < 4; ++k) start_host();
    std::vector<int> killed;
    for (const std::uint64_t chunks : after) {
      const std::size_t pick = std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(random_source());
      const int victim = live[pick];
      if (!wait_mid_work(engine, job, chunks, fmt::format("h{}", victim), 0)) break;  // (ended first)
      hosts.signal_group(victim, SIGKILL);
      killed.push_back(victim);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(pick));
      start_host();
    }
    const auto reports = hosts.reports(90s);
    for (std::size_t k = 0; k < reports.size(); ++k) {
      INFO("host h", k);
      if (std::find(killed.begin(), killed.end(), static_cast<int>(k)) != killed.end())
        CHECK(reports[k] == "killed by signal 9");
      else
        CHECK(reports[k] == "ok");
    }
    CHECK(killed.size() >= 1);
    MESSAGE("storm round ", round, ": ", killed.size(), " hosts killed, ", reports.size(), " started, ",
            meta_of(engine, job).at("redelivered"), " chunks redelivered");
    check_exact(engine, job);
    CHECK(std::stoull(meta_of(engine, job).at("redelivered")) >= 1);
    CHECK(hosts.all_gone());
  }
}

TEST_CASE("a host SIGKILLed at a random moment while results stay on their hosts: the others compute them again, exact") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  constexpr std::uint64_t n = 1000;
  const auto options = [&](const std::string& job, int k) {
    return ClusterOptions{.url = server.url(), .job = job, .host = "h" + std::to_string(k), .lease = 300ms,
                          .flush = 50ms, .chunk = 10, .command_timeout = 300ms};
  };
  const auto run = [&](const ClusterOptions& o) {
    Pool pool({.workers = 1});
    Cluster cluster(o);
    const std::vector<Block> got = cluster.map(pool, Range{0, n}, block_of);
    for (std::uint64_t i = 0; i < n; ++i)
      if (!is_block_of(got.at(i), i)) return "wrong result at " + std::to_string(i);
    return std::string("ok");
  };
  // The work's length, measured: three hosts, no kill.
  const auto start = Clock::now();
  {
    Hosts hosts;
    for (int k = 0; k < 3; ++k) hosts.start([&](int me) { return run(options("blocks-measure", me)); });
    for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  }
  const auto length = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  // (most chunks are not worth sending; how many are depends on how long they waited for
  // a CPU: a sanitizer's build sends more)
  MESSAGE(engine.command({"HLEN", "psj:{blocks-measure}:res"}).integer, " of ", n / 10,
          " chunks' results were sent in the run without a kill");
  int unsent_of_victim = 0;
  for (int round = 0; round < 6; ++round) {
    const std::string job = "blocks-" + std::to_string(round);
    const auto kill_at = std::chrono::microseconds(
        std::uniform_int_distribution<long long>(0, length.count())(random_source()));
    INFO("round ", round, ": h0 killed ", kill_at.count(), " us into ", length.count(), " us");
    Hosts hosts;
    for (int k = 0; k < 3; ++k) hosts.start([&](int me) { return run(options(job, me)); });
    std::this_thread::sleep_for(kill_at);
    hosts.signal_group(0, SIGKILL);
    const auto reports = hosts.reports(60s);
    CHECK((reports[0] == "killed by signal 9" || reports[0] == "ok"));  // (or it had ended first)
    CHECK(reports[1] == "ok");
    CHECK(reports[2] == "ok");
    const auto meta = meta_of(engine, job);
    CHECK(meta.at("state") == "done");
    CHECK(meta.at("done_items") == std::to_string(n));
    CHECK(meta.at("failed_items") == "0");
    CHECK(meta.at("done_chunks") == std::to_string(n / 10));
    // Chunks h0 completed before it died whose results it did not send: they were
    // nowhere but on h0.
    const auto doneby = engine.command({"HGETALL", "psj:{" + job + "}:doneby"}).elements;
    for (std::size_t i = 0; i + 1 < doneby.size(); i += 2)
      if (doneby[i + 1].text.find(":h0:") != std::string::npos &&
          engine.command({"HEXISTS", "psj:{" + job + "}:res", doneby[i].text}).integer == 0)
        ++unsent_of_victim;
    CHECK(hosts.all_gone());
  }
  MESSAGE(unsent_of_victim, " chunks completed by a killed host were computed again by the others");
  CHECK(unsent_of_victim > 0);
  CHECK(procshare::test::keys_kept_for_ever(engine).empty());
}

TEST_CASE("find_first: a host SIGKILLed while it holds a chunk below the match: rerun, the same answer as Pool::find_first") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  constexpr std::uint64_t match = 2222;  // in chunk 44 of 60
  {
    Pool local({.workers = 2});
    const auto expected = local.find_first(Range{0, items}, matches_slowly, match);
    REQUIRE(expected.has_value());
    CHECK(expected->first == match);
  }
  const std::uint64_t after = std::uniform_int_distribution<std::uint64_t>(1, 25)(random_source());
  INFO("kill after ", after, " chunks");
  Hosts hosts;
  for (int k = 0; k < 3; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      Cluster cluster(options_for(server, "first-killed", me, 400ms));
      const auto got = cluster.find_first(pool, Range{0, items}, matches_slowly, match);
      return got ? std::to_string(got->first) : std::string("none");
    });
  REQUIRE(wait_mid_work(engine, "first-killed", after, "h1"));
  hosts.signal_group(1, SIGKILL);
  const auto reports = hosts.reports(60s);
  CHECK(reports[0] == std::to_string(match));
  CHECK(reports[1] == "killed by signal 9");
  CHECK(reports[2] == std::to_string(match));
  const auto meta = meta_of(engine, "first-killed");
  CHECK(meta.at("state") == "done");
  CHECK(meta.at("best") == std::to_string(match));
  CHECK(std::stoull(meta.at("redelivered")) >= 1);
  CHECK(procshare::test::keys_kept_for_ever(engine).empty());
  // Every chunk up to the match's ran and was counted once.
  for (std::uint64_t c = 0; c <= match / chunk; ++c)
    CHECK(engine.command({"GETBIT", "psj:{first-killed}:done", std::to_string(c)}).integer == 1);
  CHECK(hosts.all_gone());
}

TEST_CASE("a host frozen past its lease: its late completion is fenced, it returns the same results") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  const std::string job = "frozen";
  const std::uint64_t after = std::uniform_int_distribution<std::uint64_t>(1, 12)(random_source());
  INFO("freeze after ", after, " chunks");
  Hosts hosts;
  for (int k = 0; k < 3; ++k) hosts.start([&](int me) { return run_and_check(options_for(server, job, me, 300ms)); });
  REQUIRE(wait_mid_work(engine, job, after, "h1"));
  // The host process only: its pool's worker finishes the chunk meanwhile, so the host
  // completes it as soon as it runs again, with a token whose lease went elsewhere.
  hosts.signal_host(1, SIGSTOP);
  std::this_thread::sleep_for(900ms);
  hosts.signal_host(1, SIGCONT);
  // (its first call after is refused, and counted: the completion of a chunk its worker
  // finished meanwhile, or the renewal of one it still runs)
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  check_exact(engine, job);
  const auto meta = meta_of(engine, job);
  CHECK(std::stoull(meta.at("fenced")) >= 1);
  CHECK(std::stoull(meta.at("redelivered")) >= 1);
  CHECK(hosts.all_gone());
}

TEST_CASE("the server frozen briefly: the job completes; frozen for long: EngineUnavailable on every host in time") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url(), .command_timeout = 5000ms});
  {
    Hosts hosts;
    for (int k = 0; k < 3; ++k)
      hosts.start([&](int me) {
        ClusterOptions options = options_for(server, "brief", me, 2000ms);
        options.unavailable_after = 3000ms;
        return run_and_check(options);
      });
    REQUIRE(wait_mid_work(engine, "brief", std::uniform_int_distribution<std::uint64_t>(1, 20)(random_source()), "h1"));
    ::kill(server.pid(), SIGSTOP);
    std::this_thread::sleep_for(700ms);
    ::kill(server.pid(), SIGCONT);
    for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
    check_exact(engine, "brief");
    CHECK(hosts.all_gone());
  }
  Hosts hosts;
  for (int k = 0; k < 3; ++k)
    hosts.start([&](int me) {
      ClusterOptions options = options_for(server, "long", me, 2000ms);
      options.unavailable_after = 1500ms;
      Pool pool({.workers = 1});  // (outside the try: the time is taken before it closes)
      Cluster cluster(options);
      try {
        cluster.map(pool, Range{0, items}, square_slowly, 1000);
        return std::string("no throw");
      } catch (const EngineUnavailable& e) {
        const auto at = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch());
        const std::string text = e.what();
        if (text.find("unreachable for") == std::string::npos || text.find("cluster job 'long'") == std::string::npos)
          return "message: " + text;
        return "EngineUnavailable " + std::to_string(at.count());
      }
    });
  REQUIRE(wait_mid_work(engine, "long", std::uniform_int_distribution<std::uint64_t>(1, 20)(random_source()), "h1"));
  ::kill(server.pid(), SIGSTOP);
  const auto stopped = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch());
  const auto reports = hosts.reports(30s);
  ::kill(server.pid(), SIGCONT);
  for (const std::string& report : reports) {
    INFO(report);
    REQUIRE(report.rfind("EngineUnavailable ", 0) == 0);
    const long long at = std::stoll(report.substr(18));
    // unavailable_after (1.5 s) + one command timeout (0.3 s) + a flush and a backoff;
    // the bound leaves 1.5 s for a loaded machine
    CHECK(at - stopped.count() >= 1500);
    CHECK(at - stopped.count() <= 4000);
  }
  CHECK(hosts.all_gone());
}

TEST_CASE("the server restarted empty: JobLost on every host; restarted from its append-only file: the job completes") {
  for (const bool append_only : {false, true}) {
    INFO("append-only: ", append_only);
    RedisServer server("test-secret", append_only);
    PasswordEnv env(server.password());
    const std::string job = append_only ? "kept" : "lost";
    Hosts hosts;
    for (int k = 0; k < 3; ++k)
      hosts.start([&](int me) {
        ClusterOptions options = options_for(server, job, me, 1000ms);
        options.unavailable_after = 10000ms;
        return run_and_check(options);
      });
    {
      Engine engine({.url = server.url()});
      REQUIRE(wait_mid_work(engine, job, std::uniform_int_distribution<std::uint64_t>(1, 20)(random_source()), "h1"));
    }
    server.kill();
    std::this_thread::sleep_for(200ms);
    server.start();
    const auto reports = hosts.reports(60s);
    for (const std::string& report : reports) {
      if (append_only) {
        CHECK(report == "ok");
      } else {
        CHECK(report.rfind("threw JobLost", 0) == 0);
        CHECK(report.find("run_id") != std::string::npos);
      }
    }
    Engine engine({.url = server.url()});
    if (append_only) check_exact(engine, job);
    else CHECK(engine.command({"DBSIZE"}).integer == 0);  // (nothing quietly made anew)
    CHECK(hosts.all_gone());
  }
}

}  // TEST_SUITE
