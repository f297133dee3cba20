// Cluster, a host's agent: a small process forked by the host, single-threaded, dying with
// it (PR_SET_PDEATHSIG), that listens on the job's channel and brings what it hears to
// the host's running chunks at once, without waiting for the host's next engine call:
//   "stop WHO"  raises the stop flag of every local job of the cluster job (the host's
//               tasks see stop_requested() microseconds later), records WHO, and then
//               tells the engine that the host has learned of the stop (the seen script:
//               what a stop from procshare-ctl waits for), and exits;
//   "best K"    (find_first) stops the local jobs whose items all lie above the match K
//               (none can matter any more);
//   "done"      the job ended: whatever the host's pool still computes of it was
//               completed elsewhere: stopped (marked as a lost lease); the agent exits.
// It also renews the leases of the host's chunks every flush interval (the heartbeat
// script, with each local job's progress), whether or not the host's program is in a
// call of the job, and stops the local job of a chunk whose lease went to another host.
// A chunk the pool computed is renewed only while the host is in its host loop
// (AgentBoard::attended_until), where it completes it: a program away (or frozen) for
// longer than a lease loses it to another host rather than hold the job up. An agent that
// died (killed) is noticed: the host renews its leases itself again.
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
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace procshare::detail {

// How a chunk left the board: as it ran, or stopped by the agent.
enum class AgentMark : std::uint64_t {
  running = 1,
  above_match = 2,  // find_first: all its items lie above a match found elsewhere
  stopped = 3,      // the job was stopped (AgentBoard::who says by whom)
  lease_lost = 4,   // its lease went to another host (the heartbeat said so)
};

struct AgentBoard {
  static constexpr int slots = 80;  // (a host holds at most 1 + prefetch (<= 64) + its option)
  static constexpr int token_words = 36;  // (a lease token: fence, host (<= 200), nonce)
  struct Slot {
    // (generation << 3) | mark (0: free): a new generation for each chunk entered, so that
    // the agent never marks a later chunk for an earlier one it read.
    std::atomic<std::uint64_t> state;
    std::atomic<std::uint64_t> job;    // its local job's id (JobState::id; 0: not started)
    std::atomic<std::uint64_t> first;  // its first item
    std::atomic<std::uint64_t> chunk;  // its number in the engine
    std::atomic<std::uint64_t> token[token_words];  // its lease token, NUL-padded
    std::atomic<std::uint64_t> reported;  // (the agent's) the progress it last sent
  };
  // (steady clock, ns) Until when the host is taken to be in its host loop, settling
  // what its pool computed: the agent renews computed chunks until then, no longer.
  std::atomic<std::int64_t> attended_until;
  std::atomic<std::uint32_t> stopped;  // the job was stopped: `who` is written
  std::atomic<std::uint32_t> gone;     // the agent exited (or is about to)
  char who[1024];
  Slot slot[slots];
};

// The host's side: the board (made at once) and the agent (forked by start()).
class Agent {
public:
  Agent();
  // Stops the agent (stop()), unmaps the board.
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // What the agent needs of its host's job.
  struct Job {
    EngineOptions engine;
    std::vector<std::string> keys;  // the scripts' eleven
    std::string epoch, host;
    std::chrono::milliseconds lease, flush;
    std::shared_ptr<PoolCore> pool;  // the host's: its local jobs are the chunks
  };
  // Forks the agent. Throws Error if it cannot fork (the host then goes on without it:
  // stops reach it at its next engine call, and it renews its leases itself).
  void start(const Job& job);
  // Whether the agent renews the leases (forked, and neither gone nor dead).
  bool beating() noexcept;
  // Ends the agent (in the process that forked it): one that heard a stop gets up to 2 s
  // to tell the engine its host knows (see above); any other is killed at once. Reaped.
  void stop() noexcept;
  // The host is in its host loop: it settles what its pool computed within `grace`.
  void attend(std::chrono::milliseconds grace) noexcept;
  // A chunk this host holds: local job `job` (0: not started yet), items from `first`,
  // chunk `chunk` under lease `token`; its board entry (-1 if the board is full).
  int enter(std::uint64_t job, std::uint64_t first, std::uint64_t chunk, std::string_view token);
  // The chunk of entry `slot` settled or was given up: how the agent left it.
  AgentMark leave(int slot);
  // Whether the agent heard a stop, and from whom.
  bool stopped() const noexcept;
  std::string who() const;

private:
  AgentBoard* board_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  pid_t creator_;  // (a forked copy of the host neither kills nor reaps the agent)
  std::uint64_t generation_ = 0;
};

}  // namespace procshare::detail
