// Cluster jobs across hosts (forked processes, each with its own Pool of one worker)
// against a private redis-server per case: results in input order on every host, exact
// totals in the engine, find_first's answer equal to the local pool's, the lowest failure
// on every host, stops from every origin, and JobMismatch for a host whose call differs.
#include "cluster_hosts.hpp"
#include "redis_server.hpp"

#include <procshare/cluster.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

// A result whose reading back throws for the value 13 (a user's transport<R>::read that
// fails in the parent).
struct Brittle {
  int value;
};
template <> struct procshare::transport<Brittle> {
  static void write(procshare::Writer& w, const Brittle& b) { w.write(b.value); }
  static Brittle read(procshare::Reader& r) {
    const int value = r.read<int>();
    if (value == 13) throw std::runtime_error("13 cannot be read back");
    return Brittle{value};
  }
};

using namespace procshare;
using procshare::detail::Engine;
using procshare::test::Hosts;
using procshare::test::PasswordEnv;
using procshare::test::RedisServer;
using namespace std::chrono_literals;

namespace {

std::uint64_t square(std::uint64_t i) { return i * i; }
std::uint64_t square_slowly(std::uint64_t i, int micros) {
  ::usleep(static_cast<useconds_t>(micros));
  return i * i;
}
std::uint64_t cube_slowly(std::uint64_t i, int micros) {
  ::usleep(static_cast<useconds_t>(micros));
  return i * i * i;
}
// Slow first items (the first chunk, 1/256 of 20000: one host's timing says it wants few
// items), trivial ones after.
std::uint64_t square_slow_start(std::uint64_t i) {
  if (i < 100) ::usleep(8000);
  return i * i;
}
std::uint64_t fails_every_thousandth(std::uint64_t i) {
  if (i % 1000 == 999) throw std::runtime_error("bad item " + std::to_string(i));
  return i;
}
std::uint64_t dies_at_777(std::uint64_t i) {
  if (i == 777) ::raise(SIGKILL);  // (its worker dies; a new one takes the rest)
  return i;
}
// Set before the pool of a late host is made: its workers then throw should they run an
// item.
bool late_pool = false;
std::uint64_t square_unless_late(std::uint64_t i, int micros) {
  if (late_pool) throw std::runtime_error("an item ran on the late host's pool");
  if (micros > 0) ::usleep(static_cast<useconds_t>(micros));
  return i * i;
}
procshare::test::Block block_unless_late(std::uint64_t i) {
  if (late_pool) throw std::runtime_error("an item ran on the late host's pool");
  return procshare::test::block_of(i);
}
std::string text_unless_late(std::uint64_t i) {
  if (late_pool) throw std::runtime_error("an item ran on the late host's pool");
  return std::string(10000, static_cast<char>('a' + i % 26)) + std::to_string(i);
}
std::string text_of(std::uint64_t i) { return std::string(10000, static_cast<char>('a' + i % 26)) + std::to_string(i); }
Brittle brittle(std::uint64_t i) { return Brittle{static_cast<int>(i)}; }
std::string tagged(const std::string& word, const std::string& suffix) { return word + suffix; }
bool is_match(std::uint64_t i, std::uint64_t above) { return i > above && i % 9973 == 9972; }
bool matches_or_throws(std::uint64_t i, std::uint64_t throws_at) {
  if (i == throws_at) throw std::invalid_argument("cannot judge " + std::to_string(i));
  return i > 30000 && i % 9973 == 9972;
}
std::uint64_t stops_at_last(std::uint64_t i) {
  ::usleep(200);
  if (i == 199) {  // the last item of the first chunk, once the rest of it ran: none to drop
    ::usleep(100000);
    procshare::request_stop();
  }
  return i;
}
std::uint64_t stops_at_1234(std::uint64_t i) {
  if (i == 1234) procshare::request_stop();
  ::usleep(200);
  return i;
}

// The job's meta hash, read as the engine holds it.
std::map<std::string, std::string> meta_of(const RedisServer& server, const std::string& job) {
  Engine engine({.url = server.url()});  // (the password: the case's PasswordEnv)
  return procshare::test::meta_of(engine, job);
}

// Keys of the engine without an expiry (a finished job's keys all expire).
std::vector<std::string> keys_kept_for_ever(const RedisServer& server) {
  Engine engine({.url = server.url()});
  return procshare::test::keys_kept_for_ever(engine);
}

// How many chunks each host completed (from the tokens in doneby: "fence:host:nonce").
std::map<std::string, int> chunks_by_host(const RedisServer& server, const std::string& job) {
  Engine engine({.url = server.url()});
  std::map<std::string, int> out;
  for (const auto& token : engine.command({"HVALS", "psj:{" + job + "}:doneby"}).elements) {
    const auto a = token.text.find(':');
    const auto b = token.text.rfind(':');
    ++out[token.text.substr(a + 1, b - a - 1)];
  }
  return out;
}

// The job's chunks (chunk -> its items [first, end)), as the engine holds them.
std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> chunks_of(const RedisServer& server,
                                                                           const std::string& job) {
  Engine engine({.url = server.url()});
  std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> out;
  const auto reply = engine.command({"HGETALL", "psj:{" + job + "}:chunks"});
  for (std::size_t i = 0; i + 1 < reply.elements.size(); i += 2) {
    const std::string& range = reply.elements[i + 1].text;
    const auto space = range.find(' ');
    out[std::stoull(reply.elements[i].text)] = {std::stoull(range.substr(0, space)), std::stoull(range.substr(space + 1))};
  }
  return out;
}
// Whether `chunks` hold every item of [0, n) exactly once.
bool cover_once(const std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>>& chunks, std::uint64_t n) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& [c, range] : chunks) ranges.push_back(range);
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t next = 0;
  for (const auto& [first, end] : ranges) {
    if (first != next || end <= first) return false;
    next = end;
  }
  return next == n;
}
// Whether a chunk holds items below those of a chunk made before it (a free chunk: the
// part of an option its host did not keep, made after others).
bool out_of_order(const std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>>& chunks) {
  std::uint64_t highest = 0;
  for (const auto& [c, range] : chunks) {
    if (range.first < highest) return true;
    highest = range.first;
  }
  return false;
}

ClusterOptions options_for(const RedisServer& server, const std::string& job, int k) {
  return ClusterOptions{.url = server.url(), .job = job, .host = "h" + std::to_string(k), .lease = 2000ms,
                        .flush = 50ms};
}

}  // namespace

TEST_SUITE("process") {

TEST_CASE("three hosts run one cluster map: every host gets every result in input order, counted once") {
  RedisServer server;
  PasswordEnv env(server.password());
  constexpr std::uint64_t n = 6000;  // (200 us each: ~0.4 s per host, so that all three join in time)
  Hosts hosts;
  for (int k = 0; k < 3; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      Cluster cluster(options_for(server, "squares", me));
      const std::vector<std::uint64_t> got = cluster.map(pool, Range{0, n}, square_slowly, 200);
      if (got.size() != n) return "size " + std::to_string(got.size());
      for (std::uint64_t i = 0; i < n; ++i)
        if (got[i] != i * i) return "wrong result at " + std::to_string(i);
      return std::string("ok");
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  const auto meta = meta_of(server, "squares");
  CHECK(meta.at("state") == "done");
  CHECK(meta.at("done_items") == std::to_string(n));
  CHECK(meta.at("failed_items") == "0");
  CHECK(meta.at("done_chunks") == meta.at("made"));
  CHECK(std::stoull(meta.at("made")) >= 6);  // (every host got work: the claim caps a chunk at a share)
  CHECK(meta.at("fenced") == "0");
  int total = 0;
  for (const auto& [host, chunks] : chunks_by_host(server, "squares")) total += chunks;
  CHECK(std::to_string(total) == meta.at("made"));
  CHECK(chunks_by_host(server, "squares").size() == 3);
  CHECK(keys_kept_for_ever(server).empty());
}

TEST_CASE("the option a join hands out: shrunk to what its host's timing says, the rest run by others, every item in one chunk") {
  RedisServer server;
  PasswordEnv env(server.password());
  constexpr std::uint64_t n = 20000;
  const auto run = [&](const std::string& job, int me) {
    Pool pool({.workers = 1});
    Cluster cluster(options_for(server, job, me));
    const std::vector<std::uint64_t> got = cluster.map(pool, Range{0, n}, square_slow_start);
    if (got.size() != n) return "size " + std::to_string(got.size());
    for (std::uint64_t i = 0; i < n; ++i)
      if (got[i] != i * i) return "wrong result at " + std::to_string(i);
    return std::string("ok");
  };
  const auto check_engine = [&](const std::string& job) {
    Engine engine({.url = server.url()});
    const auto meta = procshare::test::meta_of(engine, job);
    procshare::test::check_exact_totals(engine, job, n, std::stoull(meta.at("made")));
    CHECK(meta.at("redelivered") == "0");  // (a free chunk is not a redelivery)
    CHECK(meta.at("fenced") == "0");
    const auto chunks = chunks_of(server, job);
    CHECK(std::to_string(chunks.size()) == meta.at("made"));
    CHECK(cover_once(chunks, n));
    return chunks;
  };
  SUBCASE("three hosts: the first host's slow first chunk keeps few items of its option; the others run the rest") {
    Hosts hosts;
    for (int k = 0; k < 3; ++k) hosts.start([&](int me) { return run("options", me); });
    for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
    const auto chunks = check_engine("options");
    // (the first host's option was shrunk after the others had made chunks: a free chunk)
    CHECK(out_of_order(chunks));
  }
  SUBCASE("a lone host: what its option did not keep goes back to the items never handed out") {
    CHECK(run("lone", 0) == "ok");
    const auto chunks = check_engine("lone");
    CHECK_FALSE(out_of_order(chunks));
    REQUIRE(chunks.size() >= 3);
    CHECK(chunks.at(0) == std::pair<std::uint64_t, std::uint64_t>{0, (n + 255) / 256});
    // (the option, shrunk to ~50 ms of the first chunk's rate: 79 items in ~0.6 s)
    CHECK(chunks.at(1).first == (n + 255) / 256);
    CHECK(chunks.at(1).second - chunks.at(1).first < 100);
  }
  CHECK(keys_kept_for_ever(server).empty());
}

TEST_CASE("a cluster map over a vector with arguments equals Pool::map, with progress over all hosts") {
  RedisServer server;
  PasswordEnv env(server.password());
  std::vector<std::string> words;
  for (int i = 0; i < 3000; ++i) words.push_back(fmt::format("w{}", i * 7919 % 3001));
  Pool local({.workers = 1});
  const std::vector<std::string> expected = local.map(words, tagged, std::string("-x"));
  Hosts hosts;
  for (int k = 0; k < 2; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      Cluster cluster(options_for(server, "words", me));
      auto job = cluster.map_async(pool, words, tagged, std::string("-x"));
      const auto before = job.progress();
      if (before.total != words.size()) return std::string("total ") + std::to_string(before.total);
      const std::vector<std::string> got = job.get();
      const auto after = job.progress();
      if (after.done != words.size() || after.failed != 0 || after.skipped != 0) return std::string("progress");
      return got == expected ? std::string("ok") : std::string("results differ");
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok");
  CHECK(meta_of(server, "words").at("done_items") == "3000");
  CHECK(keys_kept_for_ever(server).empty());
}

TEST_CASE("cluster find_first returns on every host the same match as Pool::find_first") {
  RedisServer server;
  PasswordEnv env(server.password());
  const Range items{0, 200000};
  Pool local({.workers = 1});
  const auto expected = local.find_first(items, is_match, std::uint64_t{30000});
  REQUIRE(expected.has_value());
  CHECK(expected->first == 39891);
  Hosts hosts;
  for (int k = 0; k < 3; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      ClusterOptions options = options_for(server, "first", me);
      options.chunk = 500;
      Cluster cluster(options);
      const auto got = cluster.find_first(pool, items, is_match, std::uint64_t{30000});
      if (!got) return std::string("none");
      return std::to_string(got->first) + " " + std::to_string(got->second);
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "39891 39891");
  const auto meta = meta_of(server, "first");
  CHECK(meta.at("best") == "39891");
  // Chunks stop going out once the match is known: the job ended without handing out
  // its items to the end (hosts may run ahead while the match's chunk still runs).
  CHECK(std::stoull(meta.at("next")) < 200000);
  // No match: nullopt on every host.
  Hosts none;
  for (int k = 0; k < 2; ++k)
    none.start([&](int me) {
      Pool pool({.workers = 1});
      Cluster cluster(options_for(server, "first-none", me));
      const auto got = cluster.find_first(pool, Range{0, 5000}, is_match, std::uint64_t{1'000'000});
      return got ? std::string("found") : std::string("none");
    });
  for (const std::string& report : none.reports(60s)) CHECK(report == "none");
}

TEST_CASE("a failure below the find_first match is thrown on every host, one above it is not") {
  RedisServer server;
  PasswordEnv env(server.password());
  const Range items{0, 60000};
  Pool local({.workers = 1});
  CHECK_THROWS_AS(local.find_first(items, matches_or_throws, std::uint64_t{20000}), TaskError);
  CHECK(local.find_first(items, matches_or_throws, std::uint64_t{50000})->first == 39891);
  for (const std::uint64_t throws_at : {std::uint64_t{20000}, std::uint64_t{50000}}) {
    const std::string job = "first-fail-" + std::to_string(throws_at);
    Hosts hosts;
    for (int k = 0; k < 2; ++k)
      hosts.start([&](int me) {
        Pool pool({.workers = 1});
        Cluster cluster(options_for(server, job, me));
        try {
          const auto got = cluster.find_first(pool, items, matches_or_throws, throws_at);
          return got ? std::to_string(got->first) : std::string("none");
        } catch (const TaskError& e) {
          return "TaskError " + std::to_string(e.index()) + " " + e.exception_type() + " " + e.message();
        }
      });
    const std::string expected = throws_at == 20000 ? "TaskError 20000 std::invalid_argument cannot judge 20000"
                                                    : "39891";
    for (const std::string& report : hosts.reports(60s)) CHECK(report == expected);
  }
}

TEST_CASE("a cluster map with failing items throws the lowest-index TaskError on every host after all ran") {
  RedisServer server;
  PasswordEnv env(server.password());
  Hosts hosts;
  for (int k = 0; k < 3; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      Cluster cluster(options_for(server, "failing", me));
      try {
        cluster.map(pool, Range{0, 10000}, fails_every_thousandth);
        return std::string("no throw");
      } catch (const TaskError& e) {
        const std::string text = e.what();
        if (text.find("cluster job 'failing'") == std::string::npos) return "message: " + text;
        return "TaskError " + std::to_string(e.index()) + " " + e.message();
      }
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "TaskError 999 bad item 999");
  const auto meta = meta_of(server, "failing");
  CHECK(meta.at("failed_items") == "10");
  CHECK(meta.at("done_items") == "9990");
}

TEST_CASE("a pool worker killed mid-item on one host is the same WorkerDied on every host, the rest done") {
  RedisServer server;
  PasswordEnv env(server.password());
  Hosts hosts;
  for (int k = 0; k < 2; ++k)
    hosts.start([&](int me) {
      Pool pool({.workers = 1});
      Cluster cluster(options_for(server, "worker-died", me));
      try {
        cluster.map(pool, Range{0, 5000}, dies_at_777);
        return std::string("no throw");
      } catch (const WorkerDied& e) {
        const std::string text = e.what();
        if (text.find("cluster job 'worker-died'") == std::string::npos) return "message: " + text;
        return "WorkerDied " + std::to_string(e.index()) + " signal " + std::to_string(e.signal());
      }
    });
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "WorkerDied 777 signal 9");
  const auto meta = meta_of(server, "worker-died");
  CHECK(meta.at("failed_items") == "1");
  CHECK(meta.at("done_items") == "4999");
}

TEST_CASE("cancel() on one host, or a task's request_stop(), stops every host with Stopped naming who") {
  RedisServer server;
  PasswordEnv env(server.password());
  {
    Hosts hosts;
    for (int k = 0; k < 3; ++k)
      hosts.start([&](int me) {
        Pool pool({.workers = 1});
        Cluster cluster(options_for(server, "cancelled", me));
        auto job = cluster.map_async(pool, Range{0, 20000}, square_slowly, 500);
        if (me == 0) {
          job.wait_for(300ms);
          job.cancel();
        }
        try {
          job.get();
          return std::string("no throw");
        } catch (const Stopped& e) {
          return std::string(e.what());
        }
      });
    for (const std::string& report : hosts.reports(60s))
      CHECK(report.find("stopped by cancel() on h0") != std::string::npos);
    CHECK(meta_of(server, "cancelled").at("state") == "stopped");
  }
  // Two hosts of `workers` workers each run `task` (which calls request_stop()) in chunks
  // of `chunk`; every host's get() must throw Stopped naming the chunk it came from.
  const auto stopped_by_task = [&](const std::string& job, unsigned workers, std::uint64_t chunk,
                                   std::uint64_t (*task)(std::uint64_t), const std::string& items) {
    Hosts hosts;
    for (int k = 0; k < 2; ++k)
      hosts.start([&](int me) {
        Pool pool({.workers = workers});
        ClusterOptions options = options_for(server, job, me);
        options.chunk = chunk;
        Cluster cluster(options);
        try {
          cluster.map(pool, Range{0, 20000}, task);
          return std::string("no throw");
        } catch (const Stopped& e) {
          return std::string(e.what());
        }
      });
    for (const std::string& report : hosts.reports(60s)) {
      INFO(report);
      CHECK(report.find("request_stop()") != std::string::npos);
      CHECK(report.find(items) != std::string::npos);
    }
  };
  stopped_by_task("stops-itself", 1, 20, stops_at_1234, "in items 1220 to 1239");
  // Raised by the last item of a chunk, on a pool of two workers: nothing of that chunk
  // is left to drop, and the stop still reaches every host.
  stopped_by_task("stops-at-last", 2, 200, stops_at_last, "in items 0 to 199");
  CHECK(keys_kept_for_ever(server).empty());
}

TEST_CASE("a cluster map whose results outgrow the pool's arena runs in chunks that fit; Pool::map of it cannot") {
  RedisServer server;
  PasswordEnv env(server.password());
  Pool pool({.workers = 1, .arena_bytes = 1 << 20});  // (1 MB; the results take 8 MB)
  constexpr std::uint64_t n = 1'000'000;
  CHECK_THROWS_AS(pool.map(Range{0, n}, square), SegmentFull);
  Cluster cluster(options_for(server, "roomy", 0));
  const auto result = cluster.map(pool, Range{0, n}, square);
  REQUIRE(result.size() == n);
  std::uint64_t wrong = 0;
  for (std::uint64_t i = 0; i < n; ++i) wrong += result[i] != i * i;
  CHECK(wrong == 0);
  CHECK(std::stoull(meta_of(server, "roomy").at("made")) >= 16);  // (at most 512 kB of results each)
  // A host with the default arena makes larger chunks (their results not sent: trivial);
  // a late host with the small one computes them again in pieces that fit.
  Pool roomy({.workers = 1});
  Cluster early(options_for(server, "roomy-late", 0));
  CHECK(early.map(roomy, Range{0, n}, square).size() == n);
  CHECK(std::stoull(meta_of(server, "roomy-late").at("made")) < 16);
  Cluster late(options_for(server, "roomy-late", 1));
  const auto again = late.map(pool, Range{0, n}, square);
  REQUIRE(again.size() == n);
  wrong = 0;
  for (std::uint64_t i = 0; i < n; ++i) wrong += again[i] != i * i;
  CHECK(wrong == 0);
}

TEST_CASE("a result that cannot be read back on its host is a TaskError from get(), never a default value") {
  RedisServer server;
  PasswordEnv env(server.password());
  Pool pool({.workers = 1});
  Cluster cluster(options_for(server, "brittle", 0));
  CHECK_THROWS_WITH_AS(cluster.map(pool, Range{0, 100}, brittle), doctest::Contains("13 cannot be read back"),
                       TaskError);
  Cluster late(options_for(server, "brittle", 1));  // (it computes them again: the same failure)
  CHECK_THROWS_WITH_AS(late.map(pool, Range{0, 100}, brittle), doctest::Contains("13 cannot be read back"),
                       TaskError);
}

TEST_CASE("a host whose call differs from the job's is JobMismatch naming the field, and writes nothing") {
  RedisServer server;
  PasswordEnv env(server.password());
  Pool pool({.workers = 1});
  Cluster first(options_for(server, "spec", 0));
  auto job = first.map_async(pool, Range{0, 100}, square_slowly, 10);
  const auto before = meta_of(server, "spec");
  struct Row {
    std::string field;
    std::function<void(Cluster&)> call;
  };
  const std::vector<Row> rows{
      {"items (hash)", [&](Cluster& c) { c.map_async(pool, Range{1, 101}, square_slowly, 10); }},
      {"number of items", [&](Cluster& c) { c.map_async(pool, Range{0, 99}, square_slowly, 10); }},
      {"arguments (hash)", [&](Cluster& c) { c.map_async(pool, Range{0, 100}, square_slowly, 11); }},
      {"kind of call", [&](Cluster& c) { c.find_first(pool, Range{0, 100}, is_match, std::uint64_t{10}); }},
      {"task (function and types)", [&](Cluster& c) { c.map_async(pool, Range{0, 100}, cube_slowly, 10); }},
  };
  for (const Row& row : rows) {
    INFO("field: ", row.field);
    Cluster other(options_for(server, "spec", 1));
    CHECK_THROWS_WITH_AS(row.call(other), doctest::Contains(row.field.c_str()), JobMismatch);
  }
  ClusterOptions chunked = options_for(server, "spec", 1);
  chunked.chunk = 7;
  Cluster other(chunked);
  CHECK_THROWS_WITH_AS(other.map_async(pool, Range{0, 100}, square_slowly, 10),
                       doctest::Contains("chunk size is not the job's: '7' here, '0' in the job"),
                       JobMismatch);
  ClusterOptions through_engine = options_for(server, "spec", 1);
  through_engine.results = ResultTransfer::engine;
  Cluster third(through_engine);
  CHECK_THROWS_WITH_AS(third.map_async(pool, Range{0, 100}, square_slowly, 10),
                       doctest::Contains("result transfer (ClusterOptions::results) is not the job's: 'engine' "
                                         "here, 'automatic' in the job"),
                       JobMismatch);
  CHECK(meta_of(server, "spec") == before);
  const auto result = job.get();
  CHECK(result.size() == 100);
  CHECK(result[99] == 99 * 99);
}

TEST_CASE("a late host joins a finished job: costly results come from the engine, cheap ones it computes again") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  const auto sent = [&](const std::string& job) {
    return engine.command({"HLEN", "psj:{" + job + "}:res"}).integer;
  };
  const auto made = [&](const std::string& job) { return std::stoll(meta_of(server, job).at("made")); };
  // The early host's pool runs them all; the late host's pool (made once `late_pool` is
  // set: its workers inherit it) throws should it run any item.
  late_pool = false;
  Pool early_pool({.workers = 1});
  late_pool = true;
  Pool late_pool_({.workers = 1});

  SUBCASE("costly items (100 us each): every chunk's results were sent, the late host runs nothing") {
    Cluster early(options_for(server, "late", 0));
    CHECK(early.map(early_pool, Range{0, 3000}, square_unless_late, 100)[2999] == 2999ull * 2999);
    CHECK(sent("late") == made("late"));
    Cluster late(options_for(server, "late", 1));
    auto job = late.map_async(late_pool_, Range{0, 3000}, square_unless_late, 100);
    CHECK(job.wait_for(0ms));
    const auto result = job.get();
    REQUIRE(result.size() == 3000);
    for (std::uint64_t i = 0; i < 3000; ++i) REQUIRE(result[i] == i * i);
    CHECK_THROWS_WITH_AS(job.get(), doctest::Contains("get() after get() returned the results"),
                         InvalidArgument);
  }
  SUBCASE("results slow to move (64 kB each): not sent; the late host computes them again, uncounted") {
    Cluster early(options_for(server, "cheap", 0));
    CHECK(procshare::test::is_block_of(early.map(early_pool, Range{0, 1000}, block_unless_late)[999], 999));
    CHECK(sent("cheap") < made("cheap"));
    Cluster late(options_for(server, "cheap", 1));
    const auto result = late.map(early_pool, Range{0, 1000}, block_unless_late);
    REQUIRE(result.size() == 1000);
    for (std::uint64_t i = 0; i < 1000; ++i) REQUIRE(procshare::test::is_block_of(result[i], i));
    CHECK(meta_of(server, "cheap").at("done_items") == "1000");
    CHECK(chunks_by_host(server, "cheap").count("h1") == 0);
    // Variable-size results (10 kB strings), sent or not: the late host gets them all.
    Cluster early_text(options_for(server, "cheap-text", 0));
    CHECK(early_text.map(early_pool, Range{0, 1000}, text_unless_late)[999] == text_of(999));
    Cluster late_text(options_for(server, "cheap-text", 1));
    const auto texts = late_text.map(early_pool, Range{0, 1000}, text_unless_late);
    REQUIRE(texts.size() == 1000);
    for (std::uint64_t i = 0; i < 1000; ++i) REQUIRE(texts[i] == text_of(i));
  }
  SUBCASE("the same with ResultTransfer::engine: every result was sent, the late host runs nothing") {
    ClusterOptions options = options_for(server, "engine", 0);
    options.results = ResultTransfer::engine;
    Cluster early(options);
    CHECK(early.map(early_pool, Range{0, 1000}, text_unless_late)[7] == text_of(7));
    CHECK(sent("engine") == made("engine"));
    options.host = "h1";
    Cluster late(options);
    const auto result = late.map(late_pool_, Range{0, 1000}, text_unless_late);
    REQUIRE(result.size() == 1000);
    for (std::uint64_t i = 0; i < 1000; ++i) REQUIRE(result[i] == text_of(i));
  }
  SUBCASE("with ResultTransfer::engine, a result gone from the engine is JobLost, never computed again") {
    ClusterOptions options = options_for(server, "evicted", 0);
    options.results = ResultTransfer::engine;
    Cluster early(options);
    CHECK(early.map(early_pool, Range{0, 1000}, block_unless_late).size() == 1000);
    CHECK(engine.command({"DEL", "psj:{evicted}:res"}).integer == 1);  // (as an eviction would)
    options.host = "h1";
    Cluster late(options);
    CHECK_THROWS_AS(late.map(late_pool_, Range{0, 1000}, block_unless_late), JobLost);
  }
  SUBCASE("an item that fails when computed again is the late host's TaskError") {
    Cluster early(options_for(server, "again", 0));
    CHECK(early.map(early_pool, Range{0, 1000}, block_unless_late).size() == 1000);
    CHECK(sent("again") < made("again"));
    Cluster late(options_for(server, "again", 1));
    CHECK_THROWS_WITH_AS(late.map(late_pool_, Range{0, 1000}, block_unless_late),
                         doctest::Contains("item run by host h1: item"), TaskError);
  }
  Cluster empty(options_for(server, "empty", 0));
  CHECK(empty.map(early_pool, Range{0, 0}, square).empty());
  CHECK(keys_kept_for_ever(server).empty());
}

}  // TEST_SUITE
