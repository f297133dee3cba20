// Pipe and Connection: two connected ends that carry whole messages between processes
// (Python's multiprocessing.Pipe), made before fork() and used on either side of it.
//
// Shared: nothing in memory. A Pipe is one AF_UNIX stream socketpair; each end is a file
//   descriptor that fork() copies into the child. Each message is a header (a magic
//   word, the sender's type, the payload's length), then the type's name, then the
//   value serialized as pool tasks' arguments are (Transportable, transport.hpp).
// Usage: make the Pipe, fork, and let each process close the end it does not use (as in
//   Python): an end stays open while any process holds a copy of it, and only when
//   every copy is closed does its peer see the close. A process forked while it holds
//   an end (a later child, a Pool's supervisor and workers) holds a copy too.
// Ordering and visibility: messages arrive whole and in the order they were sent. One
//   end is used by one thread at a time, and by one process at a time in each direction
//   (two processes sending on copies of one end may interleave large messages).
// Waiting: recv() blocks until a whole message has arrived; recv_for()/recv_until()
//   throw Timeout at the deadline, keeping what has arrived of a message for the next
//   call; poll() waits at most its timeout and says whether recv() will not block.
//   send() blocks while the peer's buffer is full (a peer that never reads blocks it,
//   as in Python).
// Deaths: a peer whose process dies closes its end. A receiver then gets PipeClosed as
//   soon as the data before the close is read (also when it is blocked in recv(), and in
//   the middle of a message: never a partial value), and a sender gets PipeClosed, never
//   SIGPIPE.
// Errors: PipeClosed (the peer closed or died, or this end was closed); TypeMismatch
//   when recv<T>() meets a message sent as another type (the message stays for a
//   recv() of the right type); CorruptMessage for bytes that are not a message;
//   InvalidArgument for sending on the receiving end of a one-way pipe or receiving on
//   its sending end; Timeout from recv_for()/recv_until(); Error for an OS failure
//   (no descriptors left). Messages name the pipe and the end: "pipe 'results' end 1".
#pragma once

#include <procshare/detail/config.hpp>
#include <procshare/error.hpp>
#include <procshare/futex.hpp>
#include <procshare/transport.hpp>  // Writer, Reader: how values are serialized

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace procshare {

namespace detail {
struct PipeInbox;  // what has arrived of the next message (lib/pipe.cpp)

// The fixed part of every message on the wire.
struct PipeHeader {
  std::uint32_t magic;         // pipe_magic
  std::uint32_t type_size;     // bytes of the type's name, which follows the header
  std::uint64_t payload_size;  // bytes of the serialized value, which follows the name
  std::int32_t sender_pid;     // the process that sent it (for error messages)
  std::uint32_t reserved;      // 0
};
inline constexpr std::uint32_t pipe_magic = 0x4d505350;  // "PSPM"

}  // namespace detail

// How Pipe makes its ends.
struct PipeOptions {
  // true: both ends send and receive. false: `first` only receives and `second` only
  // sends (Python's Pipe(duplex=False)).
  bool duplex = true;
  // How error messages name the pipe: "pipe 'NAME' end 0".
  std::string name = "pipe";
};

// Connection: one end of a Pipe (Python's multiprocessing.connection.Connection).
// Owns its file descriptor: move-only, closed by close() or the destructor (in each
// process, its own copy). A default-constructed or moved-from end is closed.
class PROCSHARE_API Connection {
public:
  // A closed end: every call but close() throws PipeClosed.
  Connection() noexcept;
  Connection(Connection&& other) noexcept;
  // Closes this end, then takes `other`'s.
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  // Closes the end (never throws).
  ~Connection();

  // Sends `value` as one message; blocks while the peer's buffer is full. Throws
  // PipeClosed if the peer end is closed in every process (it closed it, or died),
  // InvalidArgument on the receiving end of a one-way pipe.
  template <class T> void send(const T& value) {
    using U = std::remove_cvref_t<T>;
    static_assert(detail::check_transportable<U>());
    std::vector<std::byte> message(sizeof(detail::PipeHeader));
    const std::string_view type = typeid(U).name();
    Writer writer(message);
    writer.bytes(type.data(), type.size());
    writer.write(value);
    send_message(message, type.size());
  }

  // Receives the next message as a T, blocking until it has arrived whole. Throws
  // PipeClosed when the peer closed or died (before or in the middle of the message),
  // TypeMismatch if it was sent as another type (it stays in the pipe), CorruptMessage,
  // InvalidArgument on the sending end of a one-way pipe.
  template <class T> T recv() { return receive<T>(detail::no_deadline, "recv"); }
  // As recv(), waiting at most `timeout`: throws Timeout if no whole message arrived by
  // then (what did arrive is kept for the next call).
  template <class T, class Rep, class Period>
  T recv_for(const std::chrono::duration<Rep, Period>& timeout) {
    return receive<T>(detail::deadline_after(timeout), "recv_for");
  }
  // As recv_for(), with a deadline.
  template <class T, class Clock, class Duration>
  T recv_until(const std::chrono::time_point<Clock, Duration>& deadline) {
    return receive<T>(detail::to_deadline(deadline), "recv_until");
  }

  // Whether recv() will not block: a whole message has arrived, or the peer closed (then
  // recv() throws PipeClosed). Waits at most `timeout`; past it, reads on only while
  // bytes are already there, at most 1 MiB more (zero: never blocks; a large message
  // streaming in may take several polls). What it reads is kept for recv(). Throws as
  // recv() does for a closed end or the sending end of a one-way pipe.
  template <class Rep, class Period>
  bool poll(const std::chrono::duration<Rep, Period>& timeout) {
    return poll_until(detail::deadline_after(timeout));
  }
  // poll() without waiting.
  bool poll() { return poll_until(std::chrono::steady_clock::now()); }

  // Closes this process's copy of the end (idempotent, never throws). The peer sees the
  // close once every process holding a copy has closed it.
  void close() noexcept;
  // Whether this end is closed in this process.
  bool closed() const noexcept { return fd_ < 0; }
  // Whether this end can receive (false for the sending end of a one-way pipe).
  bool readable() const noexcept { return readable_; }
  // Whether this end can send (false for the receiving end of a one-way pipe).
  bool writable() const noexcept { return writable_; }
  // The file descriptor (Python's fileno()), -1 once closed: for poll/select/epoll.
  int fd() const noexcept { return fd_; }
  // How errors name it: "pipe 'NAME' end 0".
  std::string description() const;

private:
  friend class Pipe;
  Connection(int fd, std::shared_ptr<const std::string> pipe_name, int index, bool readable,
             bool writable);

  // Fills in the header of `message` (header, type name of `type_size` bytes, payload)
  // and writes it whole.
  void send_message(std::vector<std::byte>& message, std::size_t type_size);
  // Reads until the next message has arrived whole (true) or `deadline` passes (false);
  // throws PipeClosed at the end of the data, CorruptMessage for a bad header.
  bool fill(detail::Deadline deadline, std::string_view call);
  bool poll_until(detail::Deadline deadline);
  // Waits for the next message (Timeout at `deadline`), checks that it was sent as type
  // `type` (TypeMismatch otherwise), and returns its payload, valid until discard().
  std::span<const std::byte> take(detail::Deadline deadline, std::string_view call,
                                  std::string_view type);
  // Drops the message take() returned.
  void discard() noexcept;
  [[noreturn]] void throw_undecodable(std::string_view call, std::string_view type, bool trailing);

  template <class T> T receive(detail::Deadline deadline, std::string_view call) {
    using U = std::remove_cvref_t<T>;
    static_assert(detail::check_transportable<U>());
    const std::string_view type = typeid(U).name();
    const std::span<const std::byte> payload = take(deadline, call, type);
    Reader reader(payload);
    auto decode = [&]() -> U {
      try {
        return reader.read<U>();
      } catch (const CorruptSegment&) {  // the Reader ran past the end of the payload
        throw_undecodable(call, type, false);
      }
    };
    U value = decode();
    if (reader.remaining() != 0) throw_undecodable(call, type, true);
    discard();
    return value;
  }

  int fd_ = -1;
  std::shared_ptr<const std::string> pipe_name_;  // shared by both ends
  int index_ = 0;                                 // 0: first, 1: second
  bool readable_ = false;
  bool writable_ = false;
  std::unique_ptr<detail::PipeInbox> inbox_;       // made on first receive
};

// Pipe: two connected ends (Python's `conn1, conn2 = multiprocessing.Pipe()`), e.g.
//   auto [parent_end, child_end] = procshare::Pipe();
//   auto [receiver, sender] = procshare::Pipe({.duplex = false});
// Make it before fork(); then each process keeps one end and closes the other.
// Throws Error if the OS cannot make the socket pair (no file descriptors left).
class PROCSHARE_API Pipe {
public:
  explicit Pipe(PipeOptions options = {});

  // Duplex: either end. One-way: the receiving end.
  Connection first;
  // Duplex: the other end. One-way: the sending end.
  Connection second;
};

}  // namespace procshare
