// examples/cluster_search on three hosts (processes) against a private redis-server: every
// host prints the same total, which is the single-process answer; a bad command line is
// exit status 2, an unreachable server 1 with a message.
#include "redis_server.hpp"

#include <doctest/doctest.h>

#include <stdio.h>
#include <stdlib.h>

#include <cstdint>
#include <string>
#include <vector>

using procshare::test::RedisServer;

namespace {

// Runs `command` (sh -c); returns its exit status and what it printed.
struct Ran {
  int status;
  std::string output;
};
Ran run(const std::string& command) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

std::uint64_t mix(std::uint64_t x) {  // (examples/cluster_search.cpp's)
  x += 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

}  // namespace

TEST_SUITE("examples") {

TEST_CASE("cluster_search on three hosts: every host prints the single-process total") {
  const char* program = std::getenv("PROCSHARE_CLUSTER_SEARCH");
  REQUIRE(program != nullptr);
  RedisServer server;
  constexpr std::uint64_t records = 3'000'000;
  constexpr int rounds = 2;
  std::uint64_t expected = 0;
  for (std::uint64_t id = 0; id < records; ++id) {
    std::uint64_t h = id;
    for (int r = 0; r < rounds; ++r) h = mix(h);
    expected += h % 99991 == 0;
  }
  const std::string common = std::string("PROCSHARE_REDIS_PASSWORD=") + server.password() + " " + program +
                             " --url " + server.url() + " --job example-" + std::to_string(::getpid()) +
                             " --records " + std::to_string(records) + " --rounds " + std::to_string(rounds) +
                             " --workers 1";
  const Ran ran = run("(" + common + " --host h0 & " + common + " --host h1 & " + common + " --host h2 & wait)");
  INFO(ran.output);
  for (const char* host : {"h0", "h1", "h2"}) {
    const std::string line = std::string(host) + ": 3000000 records searched by all hosts in ";
    const auto at = ran.output.find(line);
    REQUIRE(at != std::string::npos);
    const auto end = ran.output.find('\n', at);
    CHECK(ran.output.substr(at, end - at).find(": " + std::to_string(expected) + " found") != std::string::npos);
  }
  const Ran usage = run(std::string(program) + " --url " + server.url());
  CHECK(usage.status == 2);
  CHECK(usage.output.find("usage: cluster_search") != std::string::npos);
  const Ran refused = run(std::string("PROCSHARE_REDIS_PASSWORD=wrong ") + program + " --url " + server.url() +
                          " --job x --records 1000");
  CHECK(refused.status == 1);
  CHECK(refused.output.find("AuthFailed") == std::string::npos);  // (a message, not a type name)
  CHECK(refused.output.find("WRONGPASS") != std::string::npos);
}

}  // TEST_SUITE
