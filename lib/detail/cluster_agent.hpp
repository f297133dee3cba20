// Cluster, a host's agent: a small process forked by the host, single-threaded, dying with
// it (PR_SET_PDEATHSIG), that listens on the job's channel and brings what it hears to
// the host's running chunks at once, without waiting for the host's next engine call:
//   "stop WHO"  raises the stop flag of every local job of the cluster job (the host's
//               tasks see stop_requested() microseconds later), records WHO, and then
//               tells the engine that the host has learned of the stop (the seen script:
//               what a stop from procshare-ctl waits for), and exits;
//   "best K"    (find_first) stops the local jobs whose items all lie above the match K
//               (none can matter any more);
//   "done"      the job ended: the agent exits.
// It subscribes before it reads the job's state (stop, best) so that no message falls in
// the gap between the two (pub/sub delivers only to connected subscribers).
//
// The host and its agent share one page (AgentBoard, an anonymous shared mapping made
// before the fork: nothing in /dev/shm): the host enters each local job it starts and
// leaves it when it settles or gives it up; the agent marks the entries it stopped, so
// that the host tells its agent's stop from a task's request_stop().
#pragma once

#include <procshare/cluster.hpp>

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace procshare::detail {

// How a local job left the board: as it ran, or stopped by the agent.
enum class AgentMark : std::uint64_t {
  running = 1,
  above_match = 2,  // find_first: all its items lie above a match found elsewhere
  stopped = 3,      // the job was stopped (AgentBoard::who says by whom)
};

struct AgentBoard {
  static constexpr int slots = 80;  // (a host runs at most 1 + prefetch (<= 64) + its option)
  struct Slot {
    // (generation << 2) | mark (0: free): a new generation for each job entered, so that
    // the agent never marks a later job for an earlier one it read.
    std::atomic<std::uint64_t> state;
    std::atomic<std::uint64_t> job;    // the local job's id (JobState::id)
    std::atomic<std::uint64_t> first;  // its first item
  };
  std::atomic<std::uint32_t> stopped;  // the job was stopped: `who` is written
  std::atomic<std::uint32_t> failed;   // the agent gave up (the engine): `why` is written
  char who[1024];
  char why[1024];
  Slot slot[slots];
};

// The host's side: the board (made at once) and the agent (forked by start()).
class Agent {
public:
  Agent();
  // Kills and reaps the agent (in the process that forked it), unmaps the board.
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Forks the agent of host `host` in the job whose keys are `keys` (the scripts' eleven)
  // and epoch `epoch`, on the engine `options` name, stopping local jobs of `pool`.
  // Throws Error if it cannot fork (the host then goes on without it: stops reach it at
  // its next engine call).
  void start(const EngineOptions& options, const std::vector<std::string>& keys, const std::string& epoch,
             const std::string& host, std::shared_ptr<PoolCore> pool);
  bool started() const noexcept { return pid_ > 0; }
  // A local job started: its board entry (-1 if the board is full).
  int enter(std::uint64_t job, std::uint64_t first);
  // The local job of entry `slot` settled or was given up: how the agent left it.
  AgentMark leave(int slot);
  // Whether the agent heard a stop, and from whom.
  bool stopped() const noexcept;
  std::string who() const;

private:
  AgentBoard* board_;
  pid_t pid_ = -1;
  pid_t creator_;  // (a forked copy of the host neither kills nor reaps the agent)
  std::uint64_t generation_ = 0;
};

}  // namespace procshare::detail
