// procshare error family: every failure a procshare call can report.
//
// Every exception thrown by procshare derives from procshare::Error, itself a
// std::runtime_error. Messages have one shape, built with fmt:
//
//   segment 'jobs-4711': array 'results': index 12 out of range (size 8)
//
// i.e. the segment, then the object (its kind and name), then what was wrong, and any
// OS reason after a final ": ". Parts that do not apply are left out. segment() and
// object() return the first two parts on their own, so callers need not parse text.
// Boost.Interprocess exceptions never escape procshare: they are rethrown as these.
#pragma once

#include <procshare/detail/config.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace procshare {

// Base of every procshare exception. Copyable, like std::runtime_error.
class PROCSHARE_API Error : public std::runtime_error {
public:
  // Builds "segment 'S': OBJECT: DETAIL"; an empty segment or object is left out.
  // `object` is the object's description, e.g. "array 'results'".
  Error(std::string segment, std::string object, std::string_view detail);

  // The segment's name, or "" if the error concerns no particular segment.
  const std::string& segment() const noexcept { return segment_; }
  // The object's kind and name, e.g. "value 'done'", or "" for segment-level errors.
  const std::string& object() const noexcept { return object_; }

private:
  std::string segment_;
  std::string object_;
};

// Declares `class NAME : public Error` with Error's constructor.
#define PROCSHARE_DECLARE_ERROR(NAME)                                                    \
  class PROCSHARE_API NAME : public Error {                                              \
  public:                                                                                \
    using Error::Error;                                                                  \
  }

// A segment or object that should exist does not (open_* of a missing name, a handle
// whose segment is not mapped in this process or was removed and recreated).
PROCSHARE_DECLARE_ERROR(NotFound);
// create_* of a segment or object name that is already taken.
PROCSHARE_DECLARE_ERROR(AlreadyExists);
// A segment or object name that is empty, too long, contains '/' or a non-printable
// character, or is "." or "..".
PROCSHARE_DECLARE_ERROR(InvalidName);
// A size, length, count, capacity or option outside its documented range, or a call
// that makes no sense in the object's state (e.g. relocking a Mutex this thread holds).
PROCSHARE_DECLARE_ERROR(InvalidArgument);
// An Array index at or past the end.
PROCSHARE_DECLARE_ERROR(IndexOutOfRange);
// Reopening an object under another kind, element type or length.
PROCSHARE_DECLARE_ERROR(TypeMismatch);
// No room left: /dev/shm cannot reserve the segment, or the segment cannot hold
// another object (bytes or directory slots).
PROCSHARE_DECLARE_ERROR(SegmentFull);
// A segment file that is empty, short, foreign, of another layout version, not fully
// initialised, or whose directory or offsets point outside it.
PROCSHARE_DECLARE_ERROR(CorruptSegment);
// The OS refused access to a segment file (EACCES, EPERM).
PROCSHARE_DECLARE_ERROR(PermissionDenied);
// unlock() of a Mutex the calling thread does not hold.
PROCSHARE_DECLARE_ERROR(NotOwner);
// A timed call whose deadline passed, where the call reports that by exception.
PROCSHARE_DECLARE_ERROR(Timeout);
// A Barrier that is broken: a party timed out, called abort() or reset(), or died;
// every waiter gets it, and so does every arrival until reset().
PROCSHARE_DECLARE_ERROR(BrokenBarrier);
// push to a closed Queue, or pop from a closed Queue that has been drained.
PROCSHARE_DECLARE_ERROR(QueueClosed);

// A Pipe end whose other end was closed or whose process died (recv at the end of the
// data, also in the middle of a message; send with nobody left to read), or a call on
// an end this process closed (close(), or moved from).
PROCSHARE_DECLARE_ERROR(PipeClosed);
// A Pipe message that does not hold together: a foreign or garbled header (the stream
// is out of step, so the end is closed), or a payload that does not decode as the type
// it was sent as (that message is dropped).
PROCSHARE_DECLARE_ERROR(CorruptMessage);

// A pool call after close(), terminate() or a broken start-up (the message says which);
// also what pending futures and jobs fail with when the pool is terminated.
PROCSHARE_DECLARE_ERROR(PoolClosed);

#undef PROCSHARE_DECLARE_ERROR

// An access to an object poisoned by a process that died in the middle of writing it
// (or by an exception that unwound through a guard that was writing it). A Value's or
// Array's reads still work and clear_poison() makes it writable again; a container
// refuses reads too until reset(). The message says which.
class PROCSHARE_API OwnerDied : public Error {
public:
  OwnerDied(std::string segment, std::string object, std::string_view detail, int dead_pid = 0,
            std::uint32_t owner_deaths = 0);
  // The pid of the holder that died writing it (0: unknown, or poisoned by an exception).
  int dead_pid() const noexcept { return dead_pid_; }
  // How many holders of its lock have died holding it, so far.
  std::uint32_t owner_deaths() const noexcept { return owner_deaths_; }

private:
  int dead_pid_;
  std::uint32_t owner_deaths_;
};

// A pool job that was stopped (cancel(), a task's request_stop(), or a controller's stop
// flag) before all its items ran: its unstarted work was dropped. Distinct from TaskError.
class PROCSHARE_API Stopped : public Error {
public:
  using Error::Error;
};

// A task that threw in a pool worker: the item's index, the exception's type and message,
// and the worker's pid travel back to the caller (an exception_ptr cannot cross processes).
// Also what Process::join() throws when the process's callable threw.
class PROCSHARE_API TaskError : public Error {
public:
  TaskError(std::string segment, std::uint64_t index, std::string type, std::string message,
            int worker_pid);
  // As above, for an item of `object` (a cluster job: "cluster job 'J' on URL (host H)").
  TaskError(std::string segment, std::string object, std::uint64_t index, std::string type,
            std::string message, int worker_pid);
  // A Process's callable threw in child `pid`: "process 'NAME': the callable threw in pid
  // PID: TYPE: MESSAGE", where `object` is "process 'NAME'"; index() is 0.
  TaskError(std::string object, std::string type, std::string message, int pid);
  // The failing item's index in the job (0 for submit()).
  std::uint64_t index() const noexcept { return index_; }
  // The exception's type, e.g. "std::runtime_error".
  const std::string& exception_type() const noexcept { return type_; }
  // Its what().
  const std::string& message() const noexcept { return message_; }
  // The pid of the worker (or Process child) it ran in.
  int worker_pid() const noexcept { return worker_pid_; }

private:
  std::uint64_t index_;
  std::string type_;
  std::string message_;
  int worker_pid_;
};

// A pool worker that died (a signal, abort(), _exit()) while it ran an item: only that
// item fails with this; the rest of its chunk runs elsewhere.
class PROCSHARE_API WorkerDied : public Error {
public:
  WorkerDied(std::string segment, std::uint64_t index, int worker_pid, int signal,
             int exit_status);
  // As above, for an item of `object` (a cluster job).
  WorkerDied(std::string segment, std::string object, std::uint64_t index, int worker_pid,
             int signal, int exit_status);
  // The item that was running.
  std::uint64_t index() const noexcept { return index_; }
  // The dead worker's pid.
  int worker_pid() const noexcept { return worker_pid_; }
  // The signal that killed it, or 0 if it exited.
  int signal() const noexcept { return signal_; }
  // Its exit status if it exited, or -1.
  int exit_status() const noexcept { return exit_status_; }

private:
  std::uint64_t index_;
  int worker_pid_;
  int signal_;
  int exit_status_;
};

}  // namespace procshare
