// cluster_bench: what the cluster layer costs on top of a local Pool, against its own
// private redis-server (loopback, a password, no persistence; stopped at the end).
//
// Workloads (one Pool of 2 workers per host; every figure is a median over interleaved
// rounds, a ratio the median of the per-round ratios):
//   map overhead, 1 host: Cluster::map vs the same Pool::map on the same pool (Cluster()
//     and the join included), adaptive chunks, every result checked:
//     - 2,000,000 trivial items returning x -> 2x + 1 (target >= 0.9x). Their results
//       stay on the host (cheaper to compute again than to move: ResultTransfer::
//       automatic), so what this measures is the job's own cost: join, claims,
//       completions, progress. A round times 8 jobs of each, alternating (one job takes
//       ~2-4 ms: single jobs are mostly scheduling noise on a shared machine).
//     - the same items with no result (shown: the fixed cost of a cluster job, against a
//       Pool::map of ~1.5 ms). Both rows use the blocking Cluster::map: map_async forks
//       the host's agent at once (lib/detail/cluster_agent.hpp), a cost of ~1-2 ms here
//       (the fork, and the copy-on-write faults after it) that a job this short shows.
//     - 20,000 items that sleep 50 us each (target >= 0.95x); their results go through
//       the engine.
//   engine calls: from the server's INFO commandstats, the commands the host sent (the
//     scripts, AUTH; a single host that computed every result reads nothing more) and
//     all commands with those the scripts ran, for one 2,000,000-item job and one
//     20,000-item job: they follow the chunks (adaptive: ~50 ms of work each), not the
//     items.
//   chunk hand-out: 3 host processes, empty tasks, Chunk 1 item: claim + complete pairs
//     per second over all hosts, against a raw INCRBY round trip (one client, the same
//     server) measured in the same round.
// Output: a table, then one line per target saying "met" or "NOT met". Exit status 0
//   when every run was correct (whether or not the targets were met), 1 on any failure.
//
// Usage: cluster_bench [--quick] [--scale=F] [--rounds=N]
#include "../redis_server.hpp"
#include "harness.hpp"

#include <procshare/cluster.hpp>
#include <procshare/pool.hpp>

#include <fmt/format.h>

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace {

using bench::fail;
using procshare::Cluster;
using procshare::ClusterOptions;
using procshare::Pool;
using procshare::Range;
using procshare::detail::Engine;
using namespace std::chrono_literals;

std::uint64_t trivial(std::uint64_t x) { return 2 * x + 1; }
// (a task without results: only progress travels)
std::atomic<std::uint64_t> sink{0};
void touch(std::uint64_t x) { sink.store(x, std::memory_order_relaxed); }
std::uint64_t sleepy(std::uint64_t x) {
  ::usleep(50);
  return 2 * x + 1;
}
std::uint64_t empty_task(std::uint64_t x) { return x; }

int job_counter = 0;
std::string last_job;

ClusterOptions options_for(const procshare::test::RedisServer& server, const std::string& host) {
  last_job = fmt::format("bench-{}-{}", ::getpid(), job_counter++);
  return ClusterOptions{.url = server.url(),
                        .job = last_job,
                        .host = host,
                        .keep = 600000ms};  // (no big key expires while rounds are measured)
}

void check(std::vector<std::uint64_t>& got, std::uint64_t n, const char* what) {
  if (got.size() != n) fail("{}: {} results for {} items", what, got.size(), n);
  for (std::uint64_t i = 0; i < n; ++i)
    if (got[i] != 2 * i + 1) fail("{}: result {} is {}", what, i, got[i]);
}

// Items per second of Pool::map and of Cluster::map over `n` items of `task`; the
// results checked (a void task: the job's progress).
template <class R> bench::RunResult pool_map(Pool& pool, std::uint64_t n, R (*task)(std::uint64_t)) {
  const auto start = bench::Clock::now();
  if constexpr (std::is_void_v<R>) {
    auto job = pool.map_async(Range{0, n}, task);
    job.get();
    const double seconds = bench::seconds_since(start);
    if (job.progress().done != n) fail("Pool::map: {} of {} items done", job.progress().done, n);
    return {static_cast<double>(n) / seconds, seconds, 1.0};
  } else {
    auto got = pool.map(Range{0, n}, task);
    const double seconds = bench::seconds_since(start);
    check(got, n, "Pool::map");
    return {static_cast<double>(n) / seconds, seconds, 1.0};
  }
}
template <class R>
bench::RunResult cluster_map(Pool& pool, const procshare::test::RedisServer& server, std::uint64_t n,
                             R (*task)(std::uint64_t)) {
  const auto start = bench::Clock::now();
  Cluster cluster(options_for(server, "bench-host"));
  if constexpr (std::is_void_v<R>) {
    // (the blocking map, as the other rows: map_async forks the host's agent at once, whose
    // fork and the copy-on-write faults after it cost a job this short ~1-2 ms here)
    cluster.map(pool, Range{0, n}, task);
    const double seconds = bench::seconds_since(start);
    Engine engine({.url = server.url()});
    const std::string done = engine.command({"HGET", "psj:{" + last_job + "}:meta", "done_items"}).text;
    if (done != std::to_string(n)) fail("Cluster::map: {} of {} items done", done, n);
    return {static_cast<double>(n) / seconds, seconds, 1.0};
  } else {
    auto got = cluster.map(pool, Range{0, n}, task);
    const double seconds = bench::seconds_since(start);
    check(got, n, "Cluster::map");
    return {static_cast<double>(n) / seconds, seconds, 1.0};
  }
}

// The engine's command counts (INFO commandstats), by command.
std::map<std::string, long long> command_calls(Engine& engine) {
  const std::string text = engine.command({"INFO", "commandstats"}).text;
  std::map<std::string, long long> out;
  std::size_t at = 0;
  while ((at = text.find("cmdstat_", at)) != std::string::npos) {
    const auto colon = text.find(':', at);
    const auto calls = text.find("calls=", colon);
    out[text.substr(at + 8, colon - at - 8)] = std::atoll(text.c_str() + calls + 6);
    at = colon;
  }
  return out;
}
// Calls so far: commands the hosts sent (scripts, AUTH, and the reads the scripts never
// run: a host's HGET and HMGET of other hosts' results would count with the scripts'), and
// every command including those the scripts ran.
struct Calls {
  long long sent = 0, all = 0;
};
Calls calls_now(Engine& engine) {
  Calls c;
  for (const auto& [name, calls] : command_calls(engine)) {
    if (name == "info") continue;
    c.all += calls;
    if (name == "evalsha" || name == "auth" || name == "ping" || name == "script|load" || name == "hgetall" ||
        name == "zrange")
      c.sent += calls;
  }
  return c;
}
std::string calls_text(Engine& engine, Calls before, std::uint64_t items) {
  const Calls after = calls_now(engine);
  const auto chunks = engine.command({"HGET", "psj:{" + last_job + "}:meta", "made"}).text;
  return fmt::format("{} items: {} chunks, {} calls sent ({} commands with the scripts' own)", items, chunks,
                     after.sent - before.sent, after.all - before.all);
}

// claim + complete pairs per second: `hosts` processes run one job of `chunks` one-item
// chunks with an empty task.
bench::RunResult hand_out(const procshare::test::RedisServer& server, int hosts, std::uint64_t chunks) {
  ClusterOptions options = options_for(server, "");
  options.chunk = 1;
  std::vector<pid_t> pids;
  const std::int64_t start = bench::now_ns();
  for (int k = 0; k < hosts; ++k)
    pids.push_back(bench::fork_child("hand-out host", [&, k] {
      Pool pool({.workers = 1});
      ClusterOptions mine = options;
      mine.host = fmt::format("h{}", k);
      Cluster cluster(mine);
      const auto got = cluster.map(pool, Range{0, chunks}, empty_task);
      for (std::uint64_t i = 0; i < chunks; ++i)
        if (got[i] != i) throw std::runtime_error("wrong result");
    }));
  for (const pid_t pid : pids) {
    const auto status = bench::wait_until(pid, bench::Clock::now() + bench::run_timeout);
    if (!status || *status != 0) {
      bench::kill_workers(pids);
      fail("a hand-out host failed: {}", status ? bench::describe_status(*status) : "timed out");
    }
  }
  const double seconds = static_cast<double>(bench::now_ns() - start) / 1e9;
  return {static_cast<double>(chunks) / seconds, seconds, 1.0};
}

bench::RunResult incrby(Engine& engine, std::int64_t calls) {
  const auto start = bench::Clock::now();
  for (std::int64_t i = 0; i < calls; ++i) engine.command({"INCRBY", "psj:{bench}:counter", "1"});
  const double seconds = bench::seconds_since(start);
  return {static_cast<double>(calls) / seconds, seconds, 1.0};
}

int run(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: cluster_bench [--quick] [--scale=F] [--rounds=N]\n"
      "  --quick      about 20 s: 5 rounds, smaller runs\n"
      "  --scale=F    F times more items per run\n"
      "  --rounds=N   rounds, at least 5 (default 7; 5 with --quick)",
      10);
  const double scale = common.scale * (common.quick ? 0.5 : 1.0);
  const auto trivial_n = static_cast<std::uint64_t>(std::llround(2'000'000 * scale));
  const auto sleepy_n = static_cast<std::uint64_t>(std::llround(20'000 * scale));
  const auto hand_out_n = static_cast<std::uint64_t>(std::llround(3'000 * scale));
  bench::install_signal_handlers("cluster_bench");

  procshare::test::RedisServer server("bench-secret");
  ::setenv("PROCSHARE_REDIS_PASSWORD", server.password().c_str(), 1);
  Engine engine({.url = server.url()});
  Pool pool({.workers = 2});
  fmt::print("cluster_bench: {} rounds; redis-server pid {} on {}; map {} trivial and {} x 50 us items; "
             "hand-out {} chunks over 3 hosts\n",
             common.rounds, server.pid(), server.url(), trivial_n, sleepy_n, hand_out_n);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fmt::print("cluster_bench: built with a sanitizer: the ratios below are not meaningful\n");
#endif
  std::fflush(stdout);

  // Engine calls of one job of each size, after a warm-up job (the first loads the scripts
  // into the server).
  cluster_map(pool, server, trivial_n, trivial);
  Calls before = calls_now(engine);
  cluster_map(pool, server, trivial_n, trivial);
  const std::string trivial_calls = calls_text(engine, before, trivial_n);
  before = calls_now(engine);
  cluster_map(pool, server, sleepy_n, sleepy);
  const std::string sleepy_calls = calls_text(engine, before, sleepy_n);
  pool_map(pool, trivial_n, trivial);
  incrby(engine, 1000);

  std::vector<double> fixed_cost;  // per job: the cluster job's time minus the pool's (no results)
  bench::Series cluster_touch, pool_touch, cluster_trivial, pool_trivial, cluster_sleepy, pool_sleepy, pairs,
      round_trips;
  // `jobs` jobs of each, alternating (which first changes with the round): their items per
  // second over all of them.
  constexpr int jobs = 8;
  const auto alternate = [&](int round, auto pool_job, auto cluster_job, bench::Series& pools,
                             bench::Series& clusters, std::vector<double>* differences) {
    double pool_seconds = 0, cluster_seconds = 0;
    for (int k = 0; k < jobs; ++k) {
      const bool pool_first = (round + k) % 2 == 0;
      bench::RunResult local{}, remote{};
      if (pool_first) local = pool_job();
      remote = cluster_job();
      if (!pool_first) local = pool_job();
      pool_seconds += local.seconds;
      cluster_seconds += remote.seconds;
      if (differences) differences->push_back(remote.seconds - local.seconds);
    }
    const double items = static_cast<double>(trivial_n) * jobs;
    pools.add({items / pool_seconds, pool_seconds, 1.0});
    clusters.add({items / cluster_seconds, cluster_seconds, 1.0});
  };
  const double elapsed = bench::run_rounds(common.rounds, [&](int round) {
    const bool pool_first = round % 2 == 0;
    alternate(
        round, [&] { return pool_map(pool, trivial_n, trivial); },
        [&] { return cluster_map(pool, server, trivial_n, trivial); }, pool_trivial, cluster_trivial, nullptr);
    alternate(
        round, [&] { return pool_map(pool, trivial_n, touch); },
        [&] { return cluster_map(pool, server, trivial_n, touch); }, pool_touch, cluster_touch, &fixed_cost);
    if (pool_first) pool_sleepy.add(pool_map(pool, sleepy_n, sleepy));
    cluster_sleepy.add(cluster_map(pool, server, sleepy_n, sleepy));
    if (!pool_first) pool_sleepy.add(pool_map(pool, sleepy_n, sleepy));
    if (pool_first) round_trips.add(incrby(engine, 2000));
    pairs.add(hand_out(server, 3, hand_out_n));
    if (!pool_first) round_trips.add(incrby(engine, 2000));
  });

  const std::vector<std::string> verdicts = bench::print_rate_table({
      {"map 2M trivial, results: Cluster vs Pool", &cluster_trivial, &pool_trivial, 0.9},
      {"map 2M trivial, no results: Cluster vs Pool", &cluster_touch, &pool_touch, 0},
      {"map 20k x 50us, results: Cluster vs Pool", &cluster_sleepy, &pool_sleepy, 0.95},
      {"claim+complete pairs (3 hosts) vs INCRBY", &pairs, &round_trips, 0},
  });
  fmt::print("\nrates: items per second (map rows), chunks claimed and completed per second over 3 hosts "
             "and INCRBY round trips per second (last row).\nengine calls of one job (INFO commandstats): "
             "trivial, {}; 50 us, {}.\nfixed cost of a cluster job (its time minus the Pool::map's next to it, "
             "no results, Cluster() and the join included): median {:.2f} ms ({:.2f} to {:.2f}).\nMeasured rounds took {:.1f} s.\n\n",
             trivial_calls, sleepy_calls, bench::median(fixed_cost) * 1e3, bench::percentile(fixed_cost, 0) * 1e3,
             bench::percentile(fixed_cost, 100) * 1e3, elapsed);
  for (const std::string& verdict : verdicts) fmt::print("{}\n", verdict);
  ::unsetenv("PROCSHARE_REDIS_PASSWORD");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
