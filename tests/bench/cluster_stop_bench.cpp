// cluster_stop_bench: how fast the cluster layer reacts across hosts, against its own
// private redis-server (a password, no persistence; stopped at the end), with 3 hosts
// each in a network namespace of its own (tests/netns.hpp: a veth pair per host, as
// separate machines on a link), or on loopback when this process may not make namespaces
// (the output says so).
//
// Workloads:
//   cross-host stop latency: 3 host processes (Pool of 1 worker each) run a job whose
//     tasks poll procshare::stop_requested() (every ~20 us, sleeping in between: the
//     machine has 2 cores); once every host's task runs and every host's agent listens,
//     the parent calls stop_cluster_job() (what `procshare-ctl cluster stop --no-wait`
//     runs: connect, read, the stop script). A sample: from just before that call to the
//     moment a host's task first saw stop_requested() (CLOCK_MONOTONIC: the same clock in
//     every namespace), one per host per round. Baseline, in the same rounds and under the
//     same load (the hosts' tasks polling; just before the stop): a raw EVAL "SET +
//     PUBLISH" from the parent to 3 plain hiredis subscriber processes in the same
//     namespaces, each noting when the message came. p50 and p99 over all samples; the
//     ratio's range is over 5 blocks of rounds. Every 4th round is observed apart (not in
//     the headline): the subscribers also listen to its job's channel, which splits the
//     stop into the engine's part (the call: connection, read, stop script, fan-out) and
//     the host's (its agent: message -> local stop flag -> the task's next poll); its raw
//     round comes after the stop, the hosts idle (printed for reference: what the polling
//     tasks cost a fan-out on 2 cores).
//     Targets: p50 <= 2x the raw fan-out's (measured under the same load, see above) and
//     <= 1 ms; p99 <= 10 ms. The stops come from one process (this one), as a program
//     calling stop_cluster_job() repeatedly would: its connection, the scripts' SHAs and
//     its own name are made once. `procshare-ctl cluster stop`, a process per stop, also
//     pays its start, a connection with AUTH, and one SCRIPT LOAD of each script it runs.
//   redelivery: 3 hosts run a map (chunks of 10 items of 5 ms, lease 500 ms, flush
//     100 ms); host h1's process group is SIGKILLed once it holds a lease, at a moment
//     drawn over the first part of the work; the sample is the time from the kill until
//     every chunk h1 held was completed by another host (the engine's doneby token
//     changed to another host's). Target: the slowest round <= lease + one flush (the
//     heartbeat) + one chunk's measured duration.
// Output: the tables, then one line per target saying "met" or "NOT met", and the load
//   average before and after. Exit status 0 when every run was correct (every host's
//   results and the engine's totals exact), whether or not the targets were met.
//
// Usage: cluster_stop_bench [--quick] [--rounds=N]
#include "../netns.hpp"
#include "../redis_server.hpp"
#include "harness.hpp"

#include <procshare/cluster.hpp>
#include <procshare/cluster_report.hpp>
#include <procshare/pool.hpp>

#include <fmt/format.h>
#include <hiredis/hiredis.h>

#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using bench::fail;
using procshare::Cluster;
using procshare::ClusterOptions;
using procshare::Pool;
using procshare::Range;
using procshare::detail::Engine;
using namespace std::chrono_literals;

constexpr int hosts = 3;
constexpr int host_slot = 0, subscriber_slot = 3;  // live_children slots (host k: host_slot + k)

// What the parent and the hosts share: an anonymous MAP_SHARED page made before any fork.
struct Board {
  std::atomic<int> round;                       // the stop round the hosts are to run (0: none yet)
  std::atomic<int> quit;                        // the hosts are to end
  std::atomic<int> running[hosts];              // the round whose task runs on host k
  std::atomic<int> finished[hosts];             // the round whose get() threw Stopped on host k
  std::atomic<std::int64_t> seen[hosts];        // when host k's task first saw stop_requested()
  std::atomic<int> raw_round[hosts];            // the last round subscriber k received
  std::atomic<std::int64_t> raw_seen[hosts];    // when it received it
  std::atomic<int> listening[hosts];            // subscriber k has subscribed to both
  std::atomic<int> job_round[hosts];            // the last stop round's job message subscriber k received
  std::atomic<std::int64_t> job_seen[hosts];    // when it received it
  char failure[hosts][256];                     // what went wrong on host k
};
Board* board = nullptr;
int this_host = -1;  // (set in each host before its pool forks the worker)

// The stop task: notes that it runs, then polls stop_requested() every ~20 us (at most
// 30 s); notes when it saw it.
std::uint64_t until_stopped(std::uint64_t i) {
  ::prctl(PR_SET_TIMERSLACK, 1000UL);  // (1 us: the poll's sleep is not stretched by 50 us)
  board->running[this_host].store(board->round.load());
  const auto start = bench::Clock::now();
  while (!procshare::stop_requested() && bench::Clock::now() - start < 30s) {
    const timespec pause{0, 20'000};
    ::nanosleep(&pause, nullptr);
  }
  std::int64_t unseen = 0;
  board->seen[this_host].compare_exchange_strong(unseen, bench::now_ns());
  return i;
}

// The redelivery task: 5 ms of sleep.
constexpr auto item_time = 5ms;
constexpr std::uint64_t chunk_items = 10;
constexpr auto lease = 500ms, flush = 100ms;
std::uint64_t square_slowly(std::uint64_t i) {
  std::this_thread::sleep_for(item_time);
  return i * i;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Where the hosts run: namespace k and the server's address on its link, or loopback.
struct Network {
  std::unique_ptr<procshare::test::Namespaces> net;
  const procshare::test::RedisServer& server;
  std::string url(int k) const { return net ? server.url_at(net->root_address(k)) : server.url(); }
  std::string address(int k) const { return net ? net->root_address(k) : "127.0.0.1"; }
  void enter(int k) const {
    if (net) net->enter(k);
  }
};

// Forks host k into its own process group (killed with it), registered for the signal
// handler.
pid_t start_host(int k, const std::function<void()>& body) {
  const pid_t pid = bench::fork_child(fmt::format("host h{}", k), [&] {
    ::setpgid(0, 0);
    body();
  });
  ::setpgid(pid, pid);
  bench::live_children[host_slot + k] = -pid;
  return pid;
}
void end_hosts(std::vector<pid_t>& pids, int first_slot) {
  for (const pid_t pid : pids) {
    ::kill(-pid, SIGKILL);  // (a host's group: it, its pool, its agent)
    ::kill(pid, SIGKILL);   // (a subscriber has no group of its own)
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  for (std::size_t k = 0; k < pids.size(); ++k) bench::live_children[first_slot + static_cast<int>(k)] = 0;
  pids.clear();
}
// Waits until `done()` or `limit`; fails ("<what>") if it did not come.
template <class Done> void wait_for(const Done& done, std::chrono::milliseconds limit, std::string_view what) {
  const auto until = bench::Clock::now() + limit;
  while (!done()) {
    if (bench::Clock::now() > until) fail("{}: not within {} ms", what, limit.count());
    ::usleep(200);
  }
}

// The hosts' pools' control segments ("<prefix>-pool-<k>"): removed by the signal
// handler should the bench be interrupted, and by forget_pools (a killed host cannot).
void remember_pools(const std::string& prefix) {
  for (int k = 0; k < hosts; ++k) bench::remember_path(k, fmt::format("{}-pool-{}", prefix, k));
}
void forget_pools(const std::string& prefix) {
  for (int k = 0; k < hosts; ++k) {
    ::shm_unlink(fmt::format("/{}-pool-{}", prefix, k).c_str());
    bench::remember_path(k, "");
  }
}

// Whether every host's (or subscriber's) `flags` entry holds `value`.
bool every(const std::atomic<int> (&flags)[hosts], int value) {
  return std::all_of(std::begin(flags), std::end(flags), [value](const std::atomic<int>& f) { return f.load() == value; });
}

long long subscribers(Engine& engine, const std::string& channel) {
  const auto reply = engine.command({"PUBSUB", "NUMSUB", channel});
  return reply.elements.size() == 2 ? reply.elements[1].integer : 0;
}

// ------------------------------------------------------------------ stop latency

// Every 4th stop round is observed: the subscribers listen to its job's channel (which
// splits its latency in two); the others are the headline's (no listener but the agents).
bool observed(int r) { return r % 4 == 0; }
std::string stop_job(const std::string& prefix, int r) {
  return observed(r) ? fmt::format("{}-o-{}", prefix, r) : fmt::format("{}-{}", prefix, r);
}

// Host k of the stop rounds: one pool; round r is job stop_job(r): it waits for the round,
// runs the job until it is stopped, checks that get() threw Stopped naming the bench.
void stop_host(const Network& network, int k, const std::string& prefix, int rounds) {
  network.enter(k);
  this_host = k;
  Pool pool({.workers = 1, .name = fmt::format("{}-pool-{}", prefix, k), .arena_bytes = 1u << 20});
  for (int r = 1; r <= rounds; ++r) {
    const auto until = bench::Clock::now() + 120s;
    while (board->round.load() < r) {
      if (board->quit.load() || bench::Clock::now() > until) return;
      ::usleep(100);
    }
    Cluster cluster({.url = network.url(k), .job = stop_job(prefix, r), .host = fmt::format("h{}", k),
                     .lease = 10000ms, .keep = 60000ms, .insecure_transport = true});
    auto job = cluster.map_async(pool, Range{0, 16}, until_stopped);
    try {
      job.get();
      fmt::format_to_n(board->failure[k], sizeof board->failure[k] - 1, "round {}: get() did not throw", r);
      return;
    } catch (const procshare::Stopped& e) {
      if (std::strstr(e.what(), "cluster_stop_bench") == nullptr) {
        fmt::format_to_n(board->failure[k], sizeof board->failure[k] - 1, "round {}: {}", r, e.what());
        return;
      }
    }
    board->finished[k].store(r);
  }
}

// Subscriber k of the raw fan-out: plain hiredis, SUBSCRIBEd to `channel`; notes each
// message's round and when it came. It also listens (PSUBSCRIBE `jobs`) to the stop
// rounds' job channels, beside host k's agent: when the job's stop message reached the
// namespace, which splits a cluster stop's latency into the engine's part and the host's.
void raw_subscriber(const Network& network, int k, int port, const std::string& password, const std::string& channel,
                    const std::string& jobs) {
  network.enter(k);
  redisContext* c = redisConnectWithTimeout(network.address(k).c_str(), port, timeval{2, 0});
  if (c == nullptr || c->err) throw std::runtime_error("subscriber cannot connect");
  auto* r = static_cast<redisReply*>(redisCommand(c, "AUTH %s", password.c_str()));
  if (r == nullptr) throw std::runtime_error("subscriber: AUTH failed");
  freeReplyObject(r);
  r = static_cast<redisReply*>(redisCommand(c, "SUBSCRIBE %s", channel.c_str()));
  if (r == nullptr) throw std::runtime_error("subscriber: SUBSCRIBE failed");
  freeReplyObject(r);
  r = static_cast<redisReply*>(redisCommand(c, "PSUBSCRIBE %s", jobs.c_str()));
  if (r == nullptr) throw std::runtime_error("subscriber: PSUBSCRIBE failed");
  freeReplyObject(r);
  board->listening[k].store(1);
  redisSetTimeout(c, timeval{0, 0});  // (blocks until a message; killed at the end)
  for (;;) {
    void* reply = nullptr;
    if (redisGetReply(c, &reply) != REDIS_OK || reply == nullptr) throw std::runtime_error("subscriber: connection lost");
    const std::int64_t at = bench::now_ns();
    auto* m = static_cast<redisReply*>(reply);
    if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 && m->element[2]->type == REDIS_REPLY_STRING) {
      board->raw_seen[k].store(at);
      board->raw_round[k].store(std::atoi(m->element[2]->str));
    } else if (m->type == REDIS_REPLY_ARRAY && m->elements == 4 && m->element[3]->type == REDIS_REPLY_STRING &&
               std::strncmp(m->element[3]->str, "stop ", 5) == 0) {  // ("psj:{stop-PID-R}:ctl")
      const std::string job_channel(m->element[2]->str, m->element[2]->len);
      board->job_seen[k].store(at);
      board->job_round[k].store(std::atoi(job_channel.c_str() + job_channel.rfind('-') + 1));
    }
    freeReplyObject(m);
  }
}

struct StopSamples {
  std::vector<double> cluster, raw;                  // ms, one per host per round
  std::vector<double> cluster_slowest, raw_slowest;  // ms, the last host of each round
  std::vector<double> raw_idle;                      // ms, as `raw`, in the observed rounds (hosts idle)
  std::vector<double> call;                          // ms, stop_cluster_job() itself
  std::vector<double> observed;                      // ms, as `cluster`, in the observed rounds
  std::vector<double> engine_part;                   // ms, from the call to the job's message in a namespace
  std::vector<double> host_part;                     // ms, from that message to host k's task seeing the stop
};

// One cluster stop round; appends its samples. `loaded` runs once every host's task runs
// (polling) and every agent listens, just before the stop (the raw fan-out's round).
void cluster_round(Engine& engine, const procshare::test::RedisServer& server, const std::string& prefix, int r,
                   StopSamples& s, const std::function<void()>& loaded) {
  for (int k = 0; k < hosts; ++k) board->seen[k].store(0);
  board->round.store(r);
  const std::string job = stop_job(prefix, r);
  wait_for(
      [&] {
        bool running = true;
        for (int k = 0; k < hosts; ++k) {
          if (board->failure[k][0] != '\0') return true;  // (reported below)
          running = running && board->running[k].load() == r;
        }
        return running && subscribers(engine, "psj:{" + job + "}:ctl") == hosts;  // (every agent listens)
      },
      20s, fmt::format("stop round {}: hosts running and agents subscribed", r));
  for (int k = 0; k < hosts; ++k)
    if (board->failure[k][0] != '\0') fail("host h{}: {}", k, board->failure[k]);
  loaded();
  const std::int64_t origin = bench::now_ns();
  const procshare::ClusterStopResult stop =
      procshare::stop_cluster_job({.url = server.url()}, job, {.origin = "cluster_stop_bench", .wait = false});
  const std::int64_t returned = bench::now_ns();
  if (!stop.stopped) fail("stop round {}: stop_cluster_job found the job {}", r, stop.state);
  wait_for(
      [&] {
        for (int k = 0; k < hosts; ++k)
          if (board->finished[k].load() != r && board->failure[k][0] == '\0') return false;
        return true;
      },
      20s, fmt::format("stop round {}: every host's get() threw Stopped", r));
  if (observed(r))
    wait_for([&] { return every(board->job_round, r); }, 10s,
             fmt::format("stop round {}: the job's stop message reached every namespace", r));
  double slowest = 0;
  for (int k = 0; k < hosts; ++k) {
    if (board->failure[k][0] != '\0') fail("host h{}: {}", k, board->failure[k]);
    const std::int64_t seen = board->seen[k].load();
    if (seen < origin) fail("stop round {}: host h{}'s task saw no stop", r, k);
    const double ms = static_cast<double>(seen - origin) / 1e6;
    if (observed(r)) {
      s.observed.push_back(ms);
      s.engine_part.push_back(static_cast<double>(board->job_seen[k].load() - origin) / 1e6);
      s.host_part.push_back(static_cast<double>(seen - board->job_seen[k].load()) / 1e6);
    } else {
      s.cluster.push_back(ms);
    }
    slowest = std::max(slowest, ms);
  }
  if (observed(r)) return;
  s.cluster_slowest.push_back(slowest);
  s.call.push_back(static_cast<double>(returned - origin) / 1e6);
}

// One raw fan-out round on `raw` (the parent's own hiredis connection); appends its samples
// to `samples` (and the slowest subscriber's to `slowest_of_rounds`, if given).
void raw_round(redisContext* raw, const std::string& channel, int r, std::vector<double>& samples,
               std::vector<double>* slowest_of_rounds) {
  const std::string value = std::to_string(r);
  const std::int64_t origin = bench::now_ns();
  auto* reply = static_cast<redisReply*>(
      redisCommand(raw, "EVAL %s 2 %s %s %s", "redis.call('SET', KEYS[1], ARGV[1]) redis.call('PUBLISH', KEYS[2], ARGV[1])",
                   "psj:{rawbench}:stop", channel.c_str(), value.c_str()));
  if (reply == nullptr || reply->type == REDIS_REPLY_ERROR) fail("raw fan-out: EVAL failed");
  freeReplyObject(reply);
  wait_for([&] { return every(board->raw_round, r); }, 10s, fmt::format("raw round {}: every subscriber received", r));
  double slowest = 0;
  for (int k = 0; k < hosts; ++k) {
    const double ms = static_cast<double>(board->raw_seen[k].load() - origin) / 1e6;
    samples.push_back(ms);
    slowest = std::max(slowest, ms);
  }
  if (slowest_of_rounds != nullptr) slowest_of_rounds->push_back(slowest);
}

StopSamples stop_latency(const Network& network, const procshare::test::RedisServer& server, int rounds) {
  Engine engine({.url = server.url()});
  const std::string prefix = fmt::format("stop-{}", ::getpid());
  const std::string channel = "psj:{rawbench}:ctl";
  std::vector<pid_t> host_pids, subscriber_pids;
  struct Cleanup {
    std::vector<pid_t>& hosts;
    std::vector<pid_t>& subscribers;
    std::string prefix;
    ~Cleanup() {
      board->quit.store(1);
      end_hosts(hosts, host_slot);
      end_hosts(subscribers, subscriber_slot);
      forget_pools(prefix);
    }
  } cleanup{host_pids, subscriber_pids, prefix};
  remember_pools(prefix);
  for (int k = 0; k < hosts; ++k) host_pids.push_back(start_host(k, [&, k] { stop_host(network, k, prefix, rounds); }));
  for (int k = 0; k < hosts; ++k) {
    subscriber_pids.push_back(bench::fork_child(fmt::format("subscriber {}", k), [&, k] {
      raw_subscriber(network, k, server.port(), server.password(), channel, "psj:{" + prefix + "-o-*}:ctl");
    }));
    bench::live_children[subscriber_slot + k] = subscriber_pids.back();
  }
  wait_for([&] { return every(board->listening, 1); }, 20s, "the raw subscribers subscribed");
  redisContext* raw = redisConnectWithTimeout("127.0.0.1", server.port(), timeval{2, 0});
  if (raw == nullptr || raw->err) fail("raw fan-out: cannot connect");
  std::unique_ptr<redisContext, void (*)(redisContext*)> raw_owner(raw, redisFree);
  freeReplyObject(redisCommand(raw, "AUTH %s", server.password().c_str()));
  StopSamples s;
  // (a warm-up round of each: scripts loaded, connections made)
  cluster_round(engine, server, prefix, 1, s, [&] { raw_round(raw, channel, 1, s.raw, &s.raw_slowest); });
  s = StopSamples{};
  bench::run_rounds(rounds - 1, [&](int i) {
    const int r = i + 2;
    if (observed(r)) {  // (its raw round after the stop: the hosts idle, for reference)
      cluster_round(engine, server, prefix, r, s, [] {});
      raw_round(raw, channel, r, s.raw_idle, nullptr);
    } else {
      cluster_round(engine, server, prefix, r, s, [&] { raw_round(raw, channel, r, s.raw, &s.raw_slowest); });
    }
  });
  return s;
}

// ------------------------------------------------------------------ redelivery

struct Redelivery {
  double ms;            // from the kill until every chunk h1 held was completed elsewhere
  std::size_t chunks;   // how many it held
  std::string redelivered;  // the job's count of chunks handed out again
};

std::map<std::string, std::string> hash_of(Engine& engine, const std::string& key) {
  const auto reply = engine.command({"HGETALL", key});
  std::map<std::string, std::string> out;
  for (std::size_t i = 0; i + 1 < reply.elements.size(); i += 2) out[reply.elements[i].text] = reply.elements[i + 1].text;
  return out;
}

Redelivery redelivery_round(const Network& network, Engine& engine, int round, std::uint64_t items,
                            std::chrono::milliseconds kill_at) {
  const std::string job = fmt::format("redeliver-{}-{}", ::getpid(), round);
  const std::string keys = "psj:{" + job + "}:";
  std::vector<pid_t> pids;
  struct Cleanup {
    std::vector<pid_t>& pids;
    std::string job;
    ~Cleanup() {
      end_hosts(pids, host_slot);
      forget_pools(job);
    }
  } cleanup{pids, job};
  remember_pools(job);
  const auto start = bench::Clock::now();
  for (int k = 0; k < hosts; ++k)
    pids.push_back(start_host(k, [&, k] {
      network.enter(k);
      Pool pool({.workers = 1, .name = fmt::format("{}-pool-{}", job, k), .arena_bytes = 1u << 20});
      Cluster cluster({.url = network.url(k), .job = job, .host = fmt::format("h{}", k), .lease = lease,
                       .flush = flush, .chunk = chunk_items, .keep = 60000ms, .insecure_transport = true});
      const auto got = cluster.map(pool, Range{0, items}, square_slowly);
      for (std::uint64_t i = 0; i < items; ++i)
        if (got.at(i) != i * i) throw std::runtime_error(fmt::format("wrong result at {}", i));
    }));
  std::this_thread::sleep_until(start + kill_at);
  // Once h1 holds a lease (a chunk it has not completed).
  const auto held = [&] {
    std::vector<std::pair<std::string, std::string>> out;  // chunk, token
    const auto done = hash_of(engine, keys + "doneby");
    for (const auto& [c, token] : hash_of(engine, keys + "owner"))
      if (token.find(":h1:") != std::string::npos && (!done.count(c) || done.at(c) != token)) out.emplace_back(c, token);
    return out;
  };
  wait_for([&] { return !held().empty(); }, 20s, fmt::format("redelivery round {}: h1 holds a lease", round));
  const std::int64_t killed = bench::now_ns();
  ::kill(-pids[1], SIGKILL);
  auto chunks = held();  // (what it held when it died: its leases stay until they expire)
  const std::size_t held_at_kill = chunks.size();
  std::int64_t last = killed;
  wait_for(
      [&] {
        const auto done = hash_of(engine, keys + "doneby");
        const std::int64_t now = bench::now_ns();
        for (auto it = chunks.begin(); it != chunks.end();) {
          const auto d = done.find(it->first);
          if (d == done.end()) {
            ++it;
          } else {
            if (d->second != it->second) last = now;  // (completed by another; else h1 made it before it died)
            it = chunks.erase(it);
          }
        }
        return chunks.empty();
      },
      30s, fmt::format("redelivery round {}: h1's chunks completed elsewhere", round));
  for (int k : {0, 2}) {
    const auto status = bench::wait_until(pids[static_cast<std::size_t>(k)], bench::Clock::now() + bench::run_timeout);
    if (!status || *status != 0)
      fail("redelivery round {}: host h{} {}", round, k, status ? bench::describe_status(*status) : "timed out");
  }
  auto meta = hash_of(engine, keys + "meta");
  if (meta["state"] != "done" || meta["done_items"] != std::to_string(items) || meta["failed_items"] != "0")
    fail("redelivery round {}: the job ended {} with {} of {} items done", round, meta["state"], meta["done_items"], items);
  if (std::stoull(meta["redelivered"]) < 1) fail("redelivery round {}: nothing was redelivered", round);
  return {static_cast<double>(last - killed) / 1e6, held_at_kill, meta["redelivered"]};
}

// ------------------------------------------------------------------ report

std::string ms_text(double ms) { return ms < 1 ? fmt::format("{:.3f} ms", ms) : fmt::format("{:.2f} ms", ms); }

int run(int argc, char** argv) {
  const bench::CommonOptions common = bench::parse_common_options(
      argc, argv,
      "usage: cluster_stop_bench [--quick] [--rounds=N]\n"
      "  --quick      about 30 s: 40 stop rounds, 3 redelivery rounds\n"
      "  --rounds=N   stop rounds, 5 to 1000 (default 200; 40 with --quick); redelivery: 5 (3 with --quick)");
  bool rounds_given = false;
  for (int i = 1; i < argc; ++i) rounds_given = rounds_given || std::string_view(argv[i]).starts_with("--rounds=");
  const int stop_rounds = rounds_given ? common.rounds : common.quick ? 40 : 200;
  const int redelivery_rounds = common.quick ? 3 : 5;
  bench::install_signal_handlers("cluster_stop_bench");
  const std::string load_before = load_average();

  void* page = ::mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) fail("mmap: {}", std::strerror(errno));
  board = new (page) Board{};
  procshare::test::RedisServer server("bench-secret");
  ::setenv("PROCSHARE_REDIS_PASSWORD", server.password().c_str(), 1);
  Network network{nullptr, server};
  std::string where;
  if (procshare::test::Namespaces::available()) {
    network.net = std::make_unique<procshare::test::Namespaces>(hosts);
    server.listen_also(network.net->root_addresses());
    where = fmt::format("3 hosts in network namespaces {}..{} (veth pairs, server on {})", network.net->name(0),
                        network.net->name(2), network.net->root_addresses());
  } else {
    where = "3 hosts on LOOPBACK: network namespaces not available here (needs root with CAP_NET_ADMIN)";
  }
  fmt::print("cluster_stop_bench: {} stop rounds, {} redelivery rounds; redis-server pid {}; {}\n", stop_rounds,
             redelivery_rounds, server.pid(), where);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fmt::print("cluster_stop_bench: built with a sanitizer: the figures below are not meaningful\n");
#endif
  std::fflush(stdout);

  const auto started = bench::Clock::now();
  const StopSamples stop = stop_latency(network, server, stop_rounds);
  const double stop_seconds = bench::seconds_since(started);

  // One chunk's duration, measured: 10 sleeps of 5 ms as this machine does them.
  const auto chunk_start = bench::Clock::now();
  for (std::uint64_t i = 0; i < chunk_items; ++i) square_slowly(i);
  const double chunk_ms = bench::seconds_since(chunk_start) * 1e3;
  const std::uint64_t items = 1500;  // 150 chunks: ~2.5 s of work for three hosts
  Engine engine({.url = server.url()});
  std::mt19937 random(std::random_device{}());
  std::vector<double> redelivered;
  std::string redelivery_notes;
  bench::run_rounds(redelivery_rounds, [&](int round) {
    const auto kill_at = std::chrono::milliseconds(std::uniform_int_distribution<int>(200, 1200)(random));
    const Redelivery r = redelivery_round(network, engine, round, items, kill_at);
    redelivered.push_back(r.ms);
    redelivery_notes += fmt::format("{}{:.0f} ms (killed {} ms in, holding {} chunks; redelivered {})", round ? "; " : "",
                                    r.ms, kill_at.count(), r.chunks, r.redelivered);
  });

  // Latency table: pooled percentiles; the range is that of the ratio over 5 blocks of rounds.
  const auto block_range = [&](const std::vector<double>& ours, const std::vector<double>& base, double p) {
    constexpr int blocks = 5;
    double low = 1e300, high = 0;
    for (int b = 0; b < blocks; ++b) {
      const std::size_t from = ours.size() * static_cast<std::size_t>(b) / blocks;
      const std::size_t to = ours.size() * static_cast<std::size_t>(b + 1) / blocks;
      if (to <= from) continue;
      const std::vector<double> o(ours.begin() + static_cast<std::ptrdiff_t>(from), ours.begin() + static_cast<std::ptrdiff_t>(to));
      const std::vector<double> r(base.begin() + static_cast<std::ptrdiff_t>(from), base.begin() + static_cast<std::ptrdiff_t>(to));
      const double ratio = bench::percentile(o, p) / bench::percentile(r, p);
      low = std::min(low, ratio);
      high = std::max(high, ratio);
    }
    return fmt::format("({}-{})", bench::ratio_text(low), bench::ratio_text(high));
  };
  const double p50 = bench::percentile(stop.cluster, 50), raw_p50 = bench::percentile(stop.raw, 50);
  const double p99 = bench::percentile(stop.cluster, 99), raw_p99 = bench::percentile(stop.raw, 99);
  const double slowest_p50 = bench::percentile(stop.cluster_slowest, 50);
  const double raw_slowest_p50 = bench::percentile(stop.raw_slowest, 50);
  fmt::print("\n{:<52} {:>10} {:>10} {:>8}  {:<15} {}\n", "latency (lower is better)", "procshare", "raw",
             "ratio", "(block range)", "target");
  fmt::print("{:<52} {:>10} {:>10} {:>8}  {:<15} {}\n", "stop -> a host's task saw it, p50 (vs fan-out p50)",
             ms_text(p50), ms_text(raw_p50), bench::ratio_text(p50 / raw_p50) + "t",
             block_range(stop.cluster, stop.raw, 50), "<= 2x, <= 1 ms");
  fmt::print("{:<52} {:>10} {:>10} {:>8}  {:<15} {}\n", "stop -> a host's task saw it, p99 (vs fan-out p99)",
             ms_text(p99), ms_text(raw_p99), bench::ratio_text(p99 / raw_p99) + "t",
             block_range(stop.cluster, stop.raw, 99), "<= 10 ms");
  fmt::print("{:<52} {:>10} {:>10} {:>8}  {:<15} {}\n", "stop -> all 3 hosts saw it, p50 of rounds", ms_text(slowest_p50),
             ms_text(raw_slowest_p50), bench::ratio_text(slowest_p50 / raw_slowest_p50) + "t",
             block_range(stop.cluster_slowest, stop.raw_slowest, 50), "-");
  const auto part = [](std::string_view name, const std::vector<double>& v) {
    fmt::print("{:<52} {:>10} {:>10} {:>8}  {:<15} {}\n", name, ms_text(bench::percentile(v, 50)), "-", "-", "", "-");
  };
  part("the stop_cluster_job() call itself, p50", stop.call);
  fmt::print("observed rounds (a listener beside each agent):\n");
  part("  stop -> a host's task saw it, p50", stop.observed);
  part("  stop -> its message reached the namespace, p50", stop.engine_part);
  part("  message -> a host's task saw it, p50", stop.host_part);
  part("  raw fan-out after the stop, hosts idle, p50", stop.raw_idle);
  fmt::print("{:<52} {:>10} {:>10} {:>8}  {:<15} {}\n", "  message -> a host's task saw it, p99",
             ms_text(bench::percentile(stop.host_part, 99)), "-", "-", "", "-");
  const double bound = static_cast<double>(lease.count() + flush.count()) + chunk_ms;
  const double red_median = bench::median(redelivered);
  const double red_max = *std::max_element(redelivered.begin(), redelivered.end());
  fmt::print("\n{:<52} {:>10} {:>10} {:>8}  {}\n", "redelivery (lower is better)", "measured", "bound", "ratio",
             "target");
  fmt::print("{:<52} {:>10} {:>10} {:>8}  {}\n", "SIGKILL -> its chunks completed elsewhere, median", ms_text(red_median),
             ms_text(bound), bench::ratio_text(red_median / bound) + "t", "-");
  fmt::print("{:<52} {:>10} {:>10} {:>8}  {}\n", "SIGKILL -> its chunks completed elsewhere, max", ms_text(red_max),
             ms_text(bound), bench::ratio_text(red_max / bound) + "t", "<= 1x");
  fmt::print("\nstop: {} samples ({} rounds x 3 hosts, after 1 warm-up round; every 4th round observed, apart), tasks polling every ~20 us; raw: EVAL "
             "SET+PUBLISH to 3 hiredis subscribers in the same {}, in each round just before its stop (the tasks polling); 'xt' = procshare's time over the raw one's. "
             "Stop rounds took {:.1f} s.\nredelivery: lease {} ms + flush {} ms + one chunk ({} x {} ms items, "
             "measured {:.1f} ms) = bound {:.1f} ms; rounds: {}.\nload average before: {}; after: {} (2 cores, shared).\n\n",
             stop.cluster.size(), stop.cluster_slowest.size(), network.net ? "namespaces" : "loopback",
             stop_seconds, lease.count(), flush.count(), chunk_items, item_time.count(), chunk_ms, bound,
             redelivery_notes, load_before, load_average());
  const auto verdict = [](std::string_view name, bool met, const std::string& detail) {
    fmt::print("{:<52} {} ({})\n", name, met ? "met" : "NOT met", detail);
  };
  verdict("stop p50 <= 2x raw fan-out p50", p50 <= 2 * raw_p50,
          fmt::format("{} vs target <= 2x", bench::ratio_text(p50 / raw_p50)));
  verdict("stop p50 <= 1 ms", p50 <= 1.0, fmt::format("{} vs target <= 1 ms", ms_text(p50)));
  verdict("stop p99 <= 10 ms", p99 <= 10.0, fmt::format("{} vs target <= 10 ms", ms_text(p99)));
  verdict("redelivery <= lease + flush + chunk (every round)", red_max <= bound,
          fmt::format("max {} vs {}", ms_text(red_max), ms_text(bound)));
  ::unsetenv("PROCSHARE_REDIS_PASSWORD");
  ::munmap(page, sizeof(Board));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::run_main(run, argc, argv); }
