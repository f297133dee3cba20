// Network partitions: three hosts, each in a network namespace of its own (netns.hpp),
// reach the test's redis-server through their veth pair only; the test cuts one host off
// by setting the root side of its link down (a silent drop: its calls just go unanswered).
// Cut off for 2 × lease, the host's chunks go to the others (redelivered); when its link
// comes back its late heartbeat or completion is refused (fenced), it rejoins, and it
// returns the same, exact results as the others. Cut off past unavailable_after, its
// get() throws EngineUnavailable and the others finish the job. Totals are exact in the
// engine; no process, namespace, veth, key or /dev/shm segment is left.
// Needs root (CAP_NET_ADMIN): without it each case is reported as skipped, with
// "skipped: needs CAP_NET_ADMIN", never as passed.
#include "cluster_hosts.hpp"
#include "netns.hpp"
#include "redis_server.hpp"
#include "support.hpp"

#include <procshare/cluster.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <list>
#include <map>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

using namespace procshare;
using procshare::detail::Engine;
using procshare::test::Hosts;
using procshare::test::meta_of;
using procshare::test::Namespaces;
using procshare::test::PasswordEnv;
using procshare::test::random_source;
using procshare::test::RedisServer;
using procshare::test::SegmentName;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t items = 4500;  // 2 ms each: ~3 s of work for three hosts
constexpr std::uint64_t chunk = 25;    // 180 chunks of 50 ms
constexpr auto lease = 600ms;
constexpr auto flush = 200ms;

std::uint64_t square_slowly(std::uint64_t i) {
  ::usleep(2000);
  return i * i;
}

// Reports a case skipped for want of privileges as such (doctest counts it as skipped:
// "test cases: N | 0 passed | 0 failed | N skipped").
struct SkipReason : doctest::IReporter {
  explicit SkipReason(const doctest::ContextOptions&) {}
  void test_case_skipped(const doctest::TestCaseData& tc) override {
    if (tc.m_skip && !Namespaces::available())
      std::cout << "\"" << tc.m_name << "\": skipped: needs CAP_NET_ADMIN\n";
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
};
REGISTER_LISTENER("skip_reason", 1, SkipReason);

// Declared before a case's Setup: once the Setup is gone (even after a failed check),
// checks that it left no namespace, veth or pool segment of this process behind.
struct NothingLeft {
  ~NothingLeft() {
    const std::string pid = std::to_string(::getpid());
    const std::pair<std::string, std::string> places[] = {
        {"/run/netns", "psh" + pid + "-"}, {"/sys/class/net", "psv" + pid + "-"}, {"/dev/shm", "ps-test-" + pid + "-"}};
    for (const auto& [folder, prefix] : places) {
      std::error_code error;
      for (const auto& entry : std::filesystem::directory_iterator(folder, error)) {
        const std::string name = entry.path().filename().string();
        CHECK_MESSAGE(name.rfind(prefix, 0) != 0, folder, "/", name, " is left behind");
      }
    }
  }
};

// A private redis-server the hosts reach through their namespaces' links, and the
// hosts' pools' segment names (removed when the case ends, even for a killed host).
struct Setup {
  RedisServer server;
  PasswordEnv env{server.password()};
  Namespaces net{3};
  Engine engine{{.url = server.url()}};  // (the test's own: loopback)
  std::list<SegmentName> pools;
  Setup() { server.listen_also(net.root_addresses()); }

  ClusterOptions options(const std::string& job, int k) const {
    return ClusterOptions{.url = server.url_at(net.root_address(k)), .job = job, .host = "h" + std::to_string(k),
                          .lease = lease, .flush = flush, .chunk = chunk, .insecure_transport = true};
  }
  // Starts host k of `job` in namespace k: it runs the map and checks every result;
  // reports "ok", or what went wrong (what it threw: Hosts).
  void start(Hosts& hosts, const ClusterOptions& o) {
    const std::string pool_name = pools.emplace_back("partition-pool").str();
    hosts.start([this, o, pool_name](int me) {
      net.enter(me);
      Pool pool({.workers = 1, .name = pool_name});
      Cluster cluster(o);
      const std::vector<std::uint64_t> got = cluster.map(pool, Range{0, items}, square_slowly);
      if (got.size() != items) return "got " + std::to_string(got.size()) + " results";
      for (std::uint64_t i = 0; i < items; ++i)
        if (got[i] != i * i) return "wrong result at " + std::to_string(i);
      return std::string("ok");
    });
  }
  // Waits (at most 20 s) until `host` holds a lease: false if the job ended first.
  bool wait_for_lease(const std::string& job, const std::string& host) {
    const auto until = Clock::now() + 20s;
    while (Clock::now() < until) {
      const auto meta = meta_of(engine, job);
      if (meta.count("state") && meta.at("state") != "running") return false;
      for (const auto& token : engine.command({"HVALS", "psj:{" + job + "}:owner"}).elements)
        if (token.text.find(":" + host + ":") != std::string::npos) return true;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }
  // The job ended with every item counted once.
  void check_exact(const std::string& job) { procshare::test::check_exact_totals(engine, job, items, items / chunk); }
  // Chunks completed by `host` with a lease it claimed after the fence counter was `fence`.
  long long completed_after(const std::string& job, const std::string& host, long long fence) {
    long long count = 0;
    const auto doneby = engine.command({"HVALS", "psj:{" + job + "}:doneby"}).elements;
    for (const auto& token : doneby)  // ("FENCE:HOST:NONCE")
      if (token.text.find(":" + host + ":") != std::string::npos && std::atoll(token.text.c_str()) > fence) ++count;
    return count;
  }
};

}  // namespace

TEST_SUITE("process") {

TEST_CASE("a host cut off by the network for 2 x lease: its chunks go elsewhere, its late calls are fenced, "
          "it rejoins with exact results" *
          doctest::skip(!Namespaces::available())) {
  const NothingLeft check_at_end;
  Setup setup;
  // The work's length, measured: three hosts, no partition.
  const auto start = Clock::now();
  {
    Hosts hosts;
    for (int k = 0; k < 3; ++k) setup.start(hosts, setup.options("measure", k));
    for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
    CHECK(hosts.all_gone());
  }
  const auto length = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  setup.check_exact("measure");
  MESSAGE("three hosts in their namespaces, no partition: ", length.count(), " ms");
  for (int round = 0; round < 2; ++round) {
    const std::string job = "cut-" + std::to_string(round);
    const int victim = 1 + round;  // (h1, then h2)
    const std::string name = "h" + std::to_string(victim);
    // Over the first 40% of the work: chunks are left for it to rejoin when it returns
    // (at 46%, it still completed 5).
    const auto cut_at = std::chrono::milliseconds(
        std::uniform_int_distribution<long long>(0, length.count() * 2 / 5)(random_source()));
    INFO("round ", round, ": ", name, " cut off ", cut_at.count(), " ms into ", length.count(), " ms");
    Hosts hosts;
    for (int k = 0; k < 3; ++k) setup.start(hosts, setup.options(job, k));
    std::this_thread::sleep_for(cut_at);
    REQUIRE(setup.wait_for_lease(job, name));
    setup.net.link_down(victim);
    std::this_thread::sleep_for(2 * lease);
    const long long fence_back = std::stoll(meta_of(setup.engine, job).at("fence"));
    const auto redelivered_meanwhile = std::stoull(meta_of(setup.engine, job).at("redelivered"));
    setup.net.link_up(victim);
    const auto reports = hosts.reports(60s);
    for (int k = 0; k < 3; ++k) {
      INFO("host h", k);
      CHECK(reports[static_cast<std::size_t>(k)] == "ok");
    }
    setup.check_exact(job);
    const auto meta = meta_of(setup.engine, job);
    MESSAGE("round ", round, ": ", name, " cut off for ", (2 * lease).count(), " ms at ", cut_at.count(),
            " ms: redelivered ", meta.at("redelivered"), " (", redelivered_meanwhile, " while it was cut off), fenced ",
            meta.at("fenced"), ", ", setup.completed_after(job, name, fence_back),
            " chunks claimed and completed by it after it came back");
    CHECK(redelivered_meanwhile >= 1);  // (its chunks went elsewhere while it was away)
    CHECK(std::stoull(meta.at("fenced")) >= 1);
    CHECK(setup.completed_after(job, name, fence_back) >= 1);  // (it rejoined)
    CHECK(hosts.all_gone());
  }
  CHECK(procshare::test::keys_kept_for_ever(setup.engine).empty());  // (a finished job's keys expire)
}

TEST_CASE("a host cut off past unavailable_after: its get() throws EngineUnavailable in time, the others finish "
          "exact" *
          doctest::skip(!Namespaces::available())) {
  const NothingLeft check_at_end;
  Setup setup;
  constexpr auto unavailable_after = 3000ms, command_timeout = 500ms, connect_timeout = 500ms;
  const std::string job = "gone";
  // Once 1 to 60 of the 180 chunks are done (and h1 holds a lease): mid-work.
  const auto after = std::uniform_int_distribution<std::uint64_t>(1, 60)(random_source());
  INFO("h1 cut off after ", after, " chunks");
  Hosts hosts;
  for (int k = 0; k < 3; ++k) {
    ClusterOptions o = setup.options(job, k);
    o.unavailable_after = unavailable_after;
    o.command_timeout = command_timeout;
    o.connect_timeout = connect_timeout;
    if (k != 1) {
      setup.start(hosts, o);
      continue;
    }
    const std::string pool_name = setup.pools.emplace_back("partition-pool").str();
    hosts.start([&setup, o, pool_name](int me) {
      setup.net.enter(me);
      Pool pool({.workers = 1, .name = pool_name});
      Cluster cluster(o);
      try {
        cluster.map(pool, Range{0, items}, square_slowly);
        return std::string("no throw");
      } catch (const EngineUnavailable& e) {
        // (CLOCK_MONOTONIC: the same clock in every namespace)
        const auto at = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch());
        return "EngineUnavailable at " + std::to_string(at.count()) + ": " + e.what();
      }
    });
  }
  const auto until = Clock::now() + 30s;
  while (Clock::now() < until) {
    const auto meta = meta_of(setup.engine, job);
    if (meta.count("done_chunks") && std::stoull(meta.at("done_chunks")) >= after) break;
    std::this_thread::sleep_for(2ms);
  }
  REQUIRE(setup.wait_for_lease(job, "h1"));
  const auto cut = Clock::now();
  setup.net.link_down(1);
  const auto reports = hosts.reports(60s);
  setup.net.link_up(1);
  CHECK(reports[0] == "ok");
  CHECK(reports[2] == "ok");
  INFO(reports[1]);
  REQUIRE(reports[1].rfind("EngineUnavailable at ", 0) == 0);
  CHECK(reports[1].find("unreachable") != std::string::npos);
  const auto thrown = Clock::time_point(std::chrono::nanoseconds(std::atoll(reports[1].c_str() + 21)));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(thrown - cut);
  MESSAGE("h1 threw EngineUnavailable ", took.count(), " ms after its link went down (unavailable_after ",
          unavailable_after.count(), " ms, command timeout ", command_timeout.count(), " ms)");
  // Its first unanswered call went out within a flush: from when it was sent, it retried
  // for unavailable_after, the last attempt taking at most a connect or command timeout
  // (and a loaded machine some slack).
  CHECK(took >= unavailable_after);
  CHECK(took <= flush + unavailable_after + std::max(connect_timeout, command_timeout) + 1000ms);
  setup.check_exact(job);
  CHECK(std::stoull(meta_of(setup.engine, job).at("redelivered")) >= 1);
  CHECK(hosts.all_gone());
  CHECK(procshare::test::keys_kept_for_ever(setup.engine).empty());
}

}  // TEST_SUITE
