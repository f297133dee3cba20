// Pool, the supervisor: the one process that forks every worker and every replacement,
// reaps them (one pidfd each), settles a dead worker's chunk, follows the parent's
// commands (close, terminate) and dies with the parent.
//
// Shared memory it writes: worker slots' pid, state and job id; under the pool lock, a
// dead worker's job counts (done, failed, skipped, settled) and requeued ranges, and
// claim_from (and, taking the lock over from a worker that died holding it, what that
// worker had under way: finish_cut_work); the death ring (death_write); worker_deaths, startup_failures, the pool's
// state (closing, terminating, broken) and broken_reason; supervisor_pid; rescan and the
// wake-up sequences.
#include <procshare/pool.hpp>

#include "detail/pool_internal.hpp"
#include "detail/pool_layout.hpp"
#include "detail/streams.hpp"

#include <fmt/format.h>

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <vector>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace procshare {
namespace detail {
namespace {

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

struct Supervisor {
  PoolBlock& b;
  const std::function<void()>& initializer;
  const Segment& segment;
  std::uint64_t block_offset;  // of b in segment
  int commands;  // read end of the parent's command pipe
  pid_t self = ::getpid();
  std::vector<int> pidfds;  // per worker slot; -1 if none
  // Deaths waiting for room in the death ring, each with the items it settles in its job
  // (counted only once the record is in the ring: the parent finishes a job when all of
  // it is settled, and must find every record of it by then).
  struct PendingDeath {
    DeathRecord record;
    JobSlot* job;
    std::uint64_t settled;
  };
  std::vector<PendingDeath> pending;

  void spawn(std::uint32_t index) {
    WorkerSlot& s = b.worker(index);
    s.state.store(static_cast<std::uint32_t>(WorkerState::starting));
    s.job_id.store(0);
    flush_standard_streams();  // (the supervisor prints nothing; a worker must not repeat it)
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(commands);
      for (int fd : pidfds)
        if (fd >= 0) ::close(fd);
      worker_main(b, index, self, initializer, segment, block_offset);
    }
    if (pid < 0) {
      s.state.store(static_cast<std::uint32_t>(WorkerState::exited));
      return;
    }
    s.pid.store(pid);
    pidfds[index] = pidfd_open(pid);
  }

  // Moves pending deaths into the death ring while it has room, each adding its items to
  // its job's `settled` once its record is in. Pool lock held (`settled` changes only
  // under it: see CountsJournal).
  void publish_deaths() {
    bool settled = false;
    while (!pending.empty()) {
      const std::uint64_t write = b.death_write.load(std::memory_order_relaxed);
      if (write - b.death_read.load(std::memory_order_acquire) >= death_ring_size) break;
      const PendingDeath death = pending.front();
      pending.erase(pending.begin());
      b.death_ring[write % death_ring_size] = death.record;
      b.death_write.store(write + 1, std::memory_order_release);
      if (death.settled != 0) {
        death.job->settled.fetch_add(death.settled);
        settled = true;
      }
    }
    if (settled) {  // that may have completed a job: the parent checks every job
      b.rescan.fetch_add(1);
      wake_parent(b);
    }
  }

  // A worker ended with `status`: settle the chunk it held and report its running item.
  //
  // Exactly once, wherever the worker was cut. Under the pool lock (taking it finishes
  // first what a worker that died holding it had under way: finish_cut_work), the worker
  // is never claiming or settling: it is busy, holding a chunk none of which is in the
  // job yet (a claim's store made, a settlement's journal not opened), and settled here
  // from its slot; or it holds none (idle, starting, exited), and nothing is settled.
  void settle_death(std::uint32_t index, const siginfo_t& info) {
    WorkerSlot& s = b.worker(index);
    const int signal = info.si_code == CLD_EXITED ? 0 : info.si_status;
    const int exit_status = info.si_code == CLD_EXITED ? info.si_status : -1;
    PoolLock held(b);
    const auto state = static_cast<WorkerState>(s.state.load());
    // No longer busy before its chunk's failures count in the job (see failures_so_far).
    s.state.store(static_cast<std::uint32_t>(WorkerState::exited));
    if (state == WorkerState::busy) {
      JobSlot& job = b.job(s.job_slot.load());
      const std::uint64_t id = s.job_id.load();
      if (job.id.load() == id) {
        const std::uint64_t first = s.chunk_first.load(), end = s.chunk_end.load();
        const std::uint64_t progress = s.progress.load();
        // Items before `current` are over; item `current` was running if progress is odd.
        std::uint64_t current = std::min(end, first + progress / 2);
        const bool running = progress % 2 == 1 && current < end;
        // The failures of the items before `current`: chunk_failed, unless the worker died
        // while counting the running item's own failure (then it may hold that one too).
        const std::uint64_t failed = running && s.failing_item.load() == current
                                         ? s.failed_before.load()
                                         : s.chunk_failed.load();
        // Skipping (a stopped job, or items above a find_first match) cuts a suffix: its
        // count is stored, then progress jumps to the end. Until then nothing is skipped
        // (the rest of the chunk is requeued below).
        const std::uint64_t skipped = current == end ? s.chunk_skipped.load() : 0;
        std::uint64_t settled = current - first;
        // A stream's results the worker held back are in its ring, in the batch record it
        // had opened: publish the record for it, with the results of the items that ran
        // (those after them, the running item's included, are not whole). If it had
        // published the record already, nothing is held back either.
        const std::uint64_t flushed = s.flushed_to.load();
        std::uint64_t lost_from = flushed == no_item ? current : std::clamp(flushed, first, current);
        const std::uint64_t item = s.batch_item.load(), batch_first = s.batch_first.load();
        if (item != 0 && batch_first >= lost_from && batch_first <= current) {
          const std::uint64_t write = s.ring_write.load(), count = current - batch_first;
          if (write == s.batch_record.load() && count != 0 && count * item <= stream_batch_bytes) {
            const std::uint64_t size = align_up(sizeof(RecordHeader) + count * item, 8);
            const RecordHeader header{static_cast<std::uint32_t>(size),
                                      static_cast<std::uint32_t>(RecordType::batch),
                                      id, batch_first, s.pid.load(),
                                      static_cast<std::uint32_t>(item),
                                      static_cast<std::uint32_t>(count * item), 0};
            std::memcpy(b.ring(index) + write % b.ring_bytes, &header, sizeof header);
            s.ring_write.store(write + size);
          }
          if (write != s.batch_record.load() || count == 0 || count * item <= stream_batch_bytes)
            lost_from = current;
        }
        const std::uint64_t lost = current - lost_from;
        const std::uint64_t done = settled >= failed + skipped + lost ? settled - failed - skipped - lost : 0;
        // The chunk's counts reach the job here, and only here: the running item counts
        // failed once, whether or not the worker had sent (and counted) its error (the
        // parent keeps one report of it, JobState::last_errors / death_items).
        job.done.fetch_add(done);
        job.skipped.fetch_add(skipped);
        job.failed.fetch_add(failed + lost + (running ? 1 : 0));
        const int pid = s.pid.load();
        if (running) settled += 1;
        // The cut item, what ran before it and the results held back: one record.
        PendingDeath death{{id, running ? current : no_item, pid, signal, exit_status, 0, first,
                            std::min(lost_from, current - skipped), lost_from, current},
                           &job, settled};
        if (running) current += 1;
        if (current < end) {  // the rest of its chunk runs elsewhere
          const std::uint32_t n = job.requeued_count.load();
          if (n < max_requeued) {
            job.requeued[n] = ItemRange{current, end};
            job.requeued_count.store(n + 1);
            if (b.claim_from.load() > id) b.claim_from.store(id);  // claimable again
          } else {  // nowhere to put it: those items fail too, in a second record
            job.failed.fetch_add(end - current);
            pending.push_back(death);
            death = {{id, no_item, pid, signal, exit_status, 0, 0, 0, current, end}, &job,
                     end - current};
          }
        }
        pending.push_back(death);
        publish_deaths();
      }
    }
    s.job_id.store(0);
    if (state != WorkerState::exited || exit_status != 0) b.worker_deaths.fetch_add(1);
    if (state == WorkerState::starting &&
        b.startup_failures.fetch_add(1) + 1 >= startup_failure_limit) {
      record_broken_reason(b, fmt::format("workers keep dying at start-up (last: worker {}, {} {})",
                                          s.pid.load(), signal ? "signal" : "exit status",
                                          signal ? signal : exit_status));
      b.state.store(static_cast<std::uint32_t>(PoolState::broken));
    }
    if (state != WorkerState::starting) b.startup_failures.store(0);
  }

  // Whether some job still has items to run (a closing pool replaces dead workers then).
  bool work_left() {
    for (std::uint32_t i = 0; i < std::min(b.job_slots, b.job_slots_ready.load()); ++i)
      if (b.job(i).id.load() != 0) return true;
    return false;
  }

  void kill_workers() {
    for (std::uint32_t i = 0; i < b.workers; ++i)
      if (pidfds[i] >= 0) ::syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, nullptr, 0);
    for (std::uint32_t i = 0; i < b.workers; ++i)
      if (pidfds[i] >= 0) {
        siginfo_t info{};
        ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfds[i]), &info, WEXITED);
        ::close(pidfds[i]);
        pidfds[i] = -1;
      }
  }

  [[noreturn]] void run() {
    ::setpgid(0, 0);  // the pool's own process group
    const int parent = pidfd_open(b.parent_pid);
    if (parent < 0 || ::getppid() != b.parent_pid) ::_exit(1);
    pidfds.assign(b.workers, -1);
    b.supervisor_pid.store(self);
    for (std::uint32_t i = 0; i < b.workers; ++i) spawn(i);
    for (;;) {
      std::vector<pollfd> fds{{parent, POLLIN, 0}, {commands, POLLIN, 0}};
      for (std::uint32_t i = 0; i < b.workers; ++i) fds.push_back({pidfds[i], POLLIN, 0});
      ::poll(fds.data(), fds.size(), 100);
      if (fds[0].revents != 0) {  // the parent died: so does the pool
        kill_workers();
        ::_exit(0);
      }
      if (fds[1].revents != 0) {
        char command = 0;
        if (::read(commands, &command, 1) != 1 || command == 'T') {  // terminate (or EOF)
          b.state.store(static_cast<std::uint32_t>(PoolState::terminating));
          kill_workers();
          ::_exit(0);
        }
        if (command == 'C') {
          b.state.store(static_cast<std::uint32_t>(PoolState::closing));
          wake_workers(b);
        }
      }
      const auto state = static_cast<PoolState>(b.state.load());
      bool any = false;
      for (std::uint32_t i = 0; i < b.workers; ++i) {
        if (pidfds[i] < 0) continue;
        siginfo_t info{};
        info.si_pid = 0;
        if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfds[i]), &info,
                     WEXITED | WNOHANG) != 0 || info.si_pid == 0) {
          any = true;
          continue;
        }
        ::close(pidfds[i]);
        pidfds[i] = -1;
        settle_death(i, info);
        // A job may be complete now, settled here or by the worker just before it died
        // (before it could report it): the parent checks every job.
        b.rescan.fetch_add(1);
        wake_parent(b);
        wake_workers(b);
        const auto now = static_cast<PoolState>(b.state.load());
        if (now == PoolState::running || (now == PoolState::closing && work_left())) {
          spawn(i);
          any = true;
        }
      }
      if (!pending.empty()) {
        PoolLock held(b);
        publish_deaths();
      }
      if (static_cast<PoolState>(b.state.load()) == PoolState::broken) {
        kill_workers();
        wake_parent(b);
        ::_exit(0);
      }
      if (!any && state != PoolState::running) {
        wake_parent(b);
        ::_exit(0);
      }
    }
  }
};

}  // namespace

void run_supervisor(PoolBlock& b, const std::function<void()>& initializer, const Segment& segment,
                    std::uint64_t block_offset, int commands) {
  Supervisor supervisor{b, initializer, segment, block_offset, commands, ::getpid(), {}, {}};
  supervisor.run();
}

}  // namespace detail
}  // namespace procshare
