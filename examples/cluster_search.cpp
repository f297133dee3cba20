// cluster_search: the flagship search (examples/pool_demo.cpp), split across hosts. Run
// the same command on every host, with the same --job: each one joins the job, runs
// chunks of blocks on its own Pool, and shows the progress of all hosts; every host ends
// with the same total. `bash run.sh cluster-demo` starts a private redis-server and three
// of these on this machine.
//
// Usage: cluster_search --url redis://[user@]host[:port] --job NAME [--host NAME]
//                       [--records N] [--rounds N] [--workers N] [--lease-ms N] [--insecure]
// The password: PROCSHARE_REDIS_PASSWORD (never on the command line). --insecure lets a
// non-loopback server be reached without TLS (a private network, or an stunnel).
// Prints the procshare-ctl commands for this host's pool, a progress line over all hosts,
// then "HOST: R records searched by all hosts in S s: F found" (or why it failed).
#include <procshare/cluster.hpp>
#include <procshare/pool.hpp>

#include "ctl_command.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <string_view>

using namespace std::chrono_literals;

constexpr std::uint64_t block_size = 1000;  // records per item

// A record is generated from its id; it is interesting if its mixed hash is 0 mod 99,991.
static std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

// The task: scans one block of records, `rounds` hash rounds each; returns how many are
// interesting. Idempotent (a chunk whose host died runs again elsewhere).
static std::uint32_t scan_block(std::uint64_t block, std::int64_t rounds) {
  std::uint32_t hits = 0;
  for (std::uint64_t id = block * block_size; id < (block + 1) * block_size; ++id) {
    std::uint64_t h = id;
    for (std::int64_t r = 0; r < rounds; ++r) h = mix(h);
    hits += h % 99991 == 0;
  }
  return hits;
}


int main(int argc, char** argv) {
  constexpr const char* usage =
      "usage: cluster_search --url redis://[user@]host[:port] --job NAME [--host NAME] [--records N >= 1000]\n"
      "                      [--rounds N >= 1] [--workers N] [--lease-ms N] [--insecure]\n"
      "  (the password: PROCSHARE_REDIS_PASSWORD)\n";
  procshare::ClusterOptions options;
  std::uint64_t records = 100'000'000;
  std::int64_t rounds = 100;
  unsigned workers = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--insecure") {
      options.insecure_transport = true;
      continue;
    }
    if (i + 1 >= argc) return fmt::print(stderr, "{}", usage), 2;
    const char* value = argv[++i];
    if (flag == "--url") options.url = value;
    else if (flag == "--job") options.job = value;
    else if (flag == "--host") options.host = value;
    else if (flag == "--records") records = std::strtoull(value, nullptr, 10);
    else if (flag == "--rounds") rounds = std::atoll(value);
    else if (flag == "--workers") workers = static_cast<unsigned>(std::atoi(value));
    else if (flag == "--lease-ms") options.lease = std::chrono::milliseconds(std::atoll(value));
    else return fmt::print(stderr, "{}", usage), 2;
  }
  if (options.url.empty() || options.job.empty() || records < block_size || rounds < 1)
    return fmt::print(stderr, "{}", usage), 2;

  try {
    procshare::Pool pool({.workers = workers});
    procshare::Cluster cluster(options);
    const std::string& host = cluster.options().host;
    const auto start = std::chrono::steady_clock::now();
    auto job = cluster.map_async(pool, procshare::Range{0, records / block_size}, scan_block, rounds);
    fmt::print("{}: joined job '{}' on {}: {} records in {} blocks, {} workers here\n", host, options.job,
               options.url, records / block_size * block_size, records / block_size, pool.workers());
    fmt::print("{}: this host's pool, from another terminal in this folder:\n", host);
    fmt::print("{}:   {:<64} # its workers and its chunk\n", host, ctl_command() + " show " + pool.control_segment());
    fmt::print("{}:   {:<64} # stop its chunk: stops the job on every host\n", host,
               ctl_command() + " stop " + pool.control_segment());
    std::fflush(stdout);
    auto last_line = start;
    while (!job.wait_for(200ms)) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_line < 1s) continue;
      last_line = now;
      const auto p = job.progress();
      fmt::print("{}: {:.0f}% of blocks done over all hosts\n", host,
                 100.0 * double(p.done + p.failed + p.skipped) / double(p.total));
      std::fflush(stdout);
    }
    const std::vector<std::uint32_t> hits = job.get();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("{}: {} records searched by all hosts in {:.2f} s: {} found\n", host, hits.size() * block_size,
               seconds, std::accumulate(hits.begin(), hits.end(), std::uint64_t{0}));
  } catch (const procshare::Error& e) {
    fmt::print(stderr, "cluster_search: {}\n", e.what());
    return 1;
  }
  return 0;
}
