// Internal: the layout of a pool's control block, the one object ("pool") of its control
// segment. Shared by the parent, the supervisor, the workers and controllers.
//
// Who writes what: the parent fills a job's slot and publishes it (under `lock`), reads
// result rings and frees finished jobs; the workers claim chunks (under `lock`, oldest job
// first, from `claim_from`), run them, write their own slot and result ring, and report
// each job they complete with a `complete` record; the supervisor writes worker pids,
// settles a dead worker's chunk (under `lock`), writes the death ring and bumps `rescan`
// (as controllers do when they stop jobs) so that the parent checks every job. Every step
// a death can cut is a single aligned store, but for the changes a worker makes under
// `lock` to a job's counts and claim words: those it writes in its slot's journal first
// (CountsJournal), so that whoever takes `lock` over from it makes them whole.
#pragma once

#include <procshare/mutex.hpp>
#include <procshare/pool.hpp>
#include <procshare/segment.hpp>

#include <atomic>
#include <cstdint>

namespace procshare::detail {

enum class PoolState : std::uint32_t { running = 0, closing = 1, terminating = 2, broken = 3 };
// `claiming` and `settling` happen only under the pool lock: the worker records a claim,
// or its chunk's counts move into the job (see settle_chunk and failures_so_far). A
// worker that dies in either is seen so only by whoever takes the lock over from it,
// which finishes or undoes the step first (finish_cut_work); the supervisor, settling
// the death under the lock, finds the worker busy (a chunk to settle) or holding none.
enum class WorkerState : std::uint32_t {
  empty = 0, starting = 1, idle = 2, claiming = 3, busy = 4, exited = 5, settling = 6
};

// A change that one worker makes, under the pool lock, to one job's counts and claim
// words and to the pool's items_done (a finished chunk's settlement, or a stopped job's
// unclaimed items dropped): the values it is about to store, written before `kind`
// says the change is under way. The stores are plain stores of these values, and every
// writer of those words holds the lock, so making them twice is making them once: the
// store of `kind` is the change's commit point. A worker that dies before it leaves no
// trace (its chunk is settled as busy); one that dies after it, or while it stores, left
// the lock to be taken over, and the next holder stores the values again before anything
// else (finish_cut_work). Written only by the worker, under the lock.
enum class JournalKind : std::uint32_t { none = 0, chunk = 1, drop = 2 };
struct CountsJournal {
  std::atomic<std::uint32_t> kind;      // JournalKind; none when no change is under way
  std::atomic<std::uint32_t> job_slot;  // the job's slot
  std::atomic<std::uint64_t> done, failed, skipped, settled, cursor;  // the job's words
  std::atomic<std::uint32_t> requeued_count;                          // after the change
  std::atomic<std::uint64_t> items_done;                              // the pool's
};

// One worker process and its result ring (it writes; the parent reads).
struct alignas(64) WorkerSlot {
  std::atomic<std::int32_t> pid;          // written by the supervisor at fork
  std::atomic<std::uint32_t> state;       // WorkerState
  std::atomic<std::uint32_t> job_slot;    // the chunk it claimed
  std::atomic<std::uint32_t> requeue_index;  // claiming from a requeued range: the last
  std::atomic<std::uint32_t> requeue_taken;  // range's index, and the index of the one it
                                             // takes (the last moves into its place)
  std::atomic<std::uint64_t> job_id;
  std::atomic<std::uint64_t> chunk_first;
  std::atomic<std::uint64_t> chunk_end;
  std::atomic<std::uint64_t> progress;    // 2i+1 while item first+i runs, 2i+2 once over
  std::atomic<std::uint32_t> from_requeue;
  // This chunk's items by outcome (done is the rest). A failure is counted here, by one
  // store once its error record is out, and in the job only when the chunk settles;
  // readers add a busy worker's failures to its job's (failures_so_far).
  std::atomic<std::uint64_t> chunk_failed;
  std::atomic<std::uint64_t> chunk_skipped;
  // The item whose failure is being counted (no_item: none yet in this chunk), and
  // chunk_failed before it; both written before its error record, so that a supervisor
  // settling a death during that item knows the failures of the items before it.
  std::atomic<std::uint64_t> failing_item;
  std::atomic<std::uint64_t> failed_before;
  std::atomic<std::uint64_t> tasks_done;  // chunks completed, for controllers (a worker
                                          // killed as it settles one may miss it)
  CountsJournal journal;                  // the change it makes under the pool lock
  std::atomic<std::uint64_t> flushed_to;  // a stream's chunk: results before this item
                                          // have left the worker (see RecordType::batch);
                                          // no_item while it holds none back
  std::atomic<std::uint64_t> batch_record;  // the open batch record's ring position,
  std::atomic<std::uint64_t> batch_first;   // its first item, and its result size (0: no
  std::atomic<std::uint64_t> batch_item;    // batch open); published once ring_write
                                            // has passed batch_record
  alignas(64) std::atomic<std::uint64_t> ring_write;  // bytes published (worker)
  std::atomic<std::uint32_t> ring_space_sequence;    // futex: bumped when the parent reads
  std::atomic<std::uint32_t> ring_waiting;           // the worker sleeps until this many
                                                     // bytes are free (0: it does not)
  alignas(64) std::atomic<std::uint64_t> ring_read;   // bytes consumed (parent)
};

// Arguments and results up to this size live in the job slot itself (a submit then needs
// no arena memory at all).
inline constexpr std::uint64_t inline_bytes = 64;
inline constexpr std::uint64_t in_slot = UINT64_MAX;  // an offset meaning "inline"

struct ItemRange {
  std::uint64_t first;
  std::uint64_t end;
};
inline constexpr std::uint32_t max_requeued = 16;

// One job: a submit (1 item), a map or a find_first. Job `id` lives in slot
// (id - 1) % job_slots; ids are published in order, so the slots, read from the oldest
// unfinished id on, are the jobs in submission order (older jobs are served first).
struct alignas(64) JobSlot {
  std::atomic<std::uint64_t> id;  // 0: free
  std::uint32_t kind;             // JobKind
  std::uint32_t reserved;
  ChunkFn run;
  AnyFunction function;
  // Arena offsets; args_offset and results_offset may be in_slot (the inline buffers).
  std::uint64_t items_offset, items_size, offsets_offset, args_offset, args_size;
  std::uint64_t results_offset, result_slot_bytes;
  std::uint64_t total, chunk;     // chunk: fixed by the caller, or 0 (automatic)
  std::uint64_t range_first;      // a Range job: item k is range_first + k
  // Written under the pool lock only (readers may read them without it):
  std::atomic<std::uint64_t> cursor;   // next unclaimed item
  std::atomic<std::uint64_t> settled;  // done + failed + skipped (stored after them)
  // Of settled chunks (and items dropped or lost); the failures of chunks still running
  // are their workers' (WorkerSlot::chunk_failed) until they settle.
  std::atomic<std::uint64_t> done, failed, skipped;
  std::atomic<std::uint32_t> stop;     // raised by cancel(), request_stop(), a controller
  std::atomic<std::uint64_t> best;     // find_first: the lowest match so far
  std::atomic<std::uint32_t> requeued_count;
  ItemRange requeued[max_requeued];        // ranges of dead workers' chunks, to run again
  alignas(8) std::byte inline_args[inline_bytes];
  alignas(8) std::byte inline_results[inline_bytes];
};

// A worker that died holding a chunk (supervisor -> parent): the item it was running
// (no_item if none), the items of its chunk that had run before ([ran_first, ran_end),
// for per-item outcomes), and the items that fail with WorkerDied besides it
// ([lost_first, lost_end): a stream's results it held back and that could not be sent
// for it (a batch record that does not add up), or a chunk that could not be
// requeued). One record a death (two if both ranges are needed), however many items.
inline constexpr std::uint64_t no_item = UINT64_MAX;
struct DeathRecord {
  std::uint64_t job_id;
  std::uint64_t index;
  std::int32_t pid;
  std::int32_t signal;
  std::int32_t exit_status;
  std::uint32_t reserved;
  std::uint64_t ran_first, ran_end;
  std::uint64_t lost_first, lost_end;
};
inline constexpr std::uint32_t death_ring_size = 256;

// Result ring records: a header, then the payload; 8-byte aligned; a record is never
// split across the ring's end. `complete`: the worker settled the job's last item (the
// parent collects it at once instead of polling every job). A payload too big for one
// record (over half the ring) travels as `piece` records carrying its first bytes, in
// order, then the result or error record with the rest: the parent joins the pieces of
// the same job, item and worker pid (a worker writes its ring in order, so they follow
// each other) and drops pieces whose final record never came (the worker died).
// `ran` (map jobs): a worker settled a chunk; index is its first item, the payload the
// end of the items that ran (the rest of the chunk was skipped).
// `batch` (streams, fixed-size results): the results of consecutive items from `index`
// on, type_length bytes each. A worker opens a batch record in its ring and writes a
// stream's results into it as they come, then publishes it (a record at a time, not an
// item); WorkerSlot::batch_first/batch_item say that one is open, so that a supervisor
// settling its death publishes the results of the items that ran (and flushed_to which
// results were sent already).
enum class RecordType : std::uint32_t { result = 1, error = 2, padding = 3, complete = 4, piece = 5, ran = 6, batch = 7 };
struct RecordHeader {
  std::uint32_t size;  // whole record, header included
  std::uint32_t type;  // RecordType
  std::uint64_t job_id;
  std::uint64_t index;
  std::int32_t pid;
  std::uint32_t type_length;     // error: bytes of the exception type before the message
                                 // (counted from the first piece, if it came in pieces)
  std::uint32_t payload_length;  // bytes after the header, padding excluded
  std::uint32_t reserved;
};

struct alignas(64) PoolBlock {
  ObjectHeader header;
  RobustLock lock;  // guards claims, requeues, job slot ids and every change of a job's
                    // counts (done, failed, skipped, settled) and of items_done
  std::uint32_t lock_deaths_seen;  // lock.deaths whose holders' cut work is finished
                                   // (finish_cut_work; under `lock`)
  alignas(64) std::atomic<std::uint32_t> work_sequence;    // futex: workers wait for work
  std::atomic<std::uint32_t> workers_waiting;
  std::atomic<std::uint32_t> parent_sequence;  // futex: the parent waits for progress
  std::atomic<std::uint32_t> parent_waiting;
  std::atomic<std::uint32_t> records_wanted;   // a stream waits: wake the parent per record
  std::atomic<std::uint32_t> rescan;           // bumped when the parent must check every job
  std::atomic<std::uint32_t> state;            // PoolState
  std::int32_t parent_pid;
  std::atomic<std::int32_t> supervisor_pid;
  std::uint32_t workers;
  std::uint32_t job_slots;
  std::uint32_t reserved;
  std::uint64_t max_tasks_per_child;
  std::uint64_t ring_bytes;
  std::uint64_t workers_offset, jobs_offset, rings_offset, arena_offset, arena_bytes;
  std::atomic<std::uint32_t> job_slots_ready;  // slots reserved so far (the parent reserves
                                               // the table as ids first reach them)
  std::atomic<std::uint64_t> published;   // the newest job id published (under `lock`)
  std::atomic<std::uint64_t> claim_from;  // no job older than this has unclaimed work
  std::atomic<std::uint64_t> items_done;       // over all jobs
  std::atomic<std::uint32_t> startup_failures; // in a row
  std::atomic<std::uint32_t> worker_deaths;
  char broken_reason[256];
  alignas(64) std::atomic<std::uint64_t> death_write;
  alignas(64) std::atomic<std::uint64_t> death_read;
  DeathRecord death_ring[death_ring_size];

  std::byte* base() { return reinterpret_cast<std::byte*>(this); }
  WorkerSlot& worker(std::uint32_t i) {
    return reinterpret_cast<WorkerSlot*>(base() + workers_offset)[i];
  }
  JobSlot& job(std::uint32_t i) { return reinterpret_cast<JobSlot*>(base() + jobs_offset)[i]; }
  JobSlot& job_of(std::uint64_t id) { return job(static_cast<std::uint32_t>((id - 1) % job_slots)); }
  std::byte* ring(std::uint32_t i) { return base() + rings_offset + i * ring_bytes; }
  std::byte* arena() { return base() + arena_offset; }
};

}  // namespace procshare::detail
