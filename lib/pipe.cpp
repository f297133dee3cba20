// Pipe and Connection: a socketpair carrying length-prefixed, typed messages.
#include <procshare/pipe.hpp>

#include "detail/names.hpp"

#include <fmt/format.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace procshare {
namespace detail {

// What has arrived of the next message: its header, then its body (type name and
// payload). Kept across calls, so a recv_for() that times out mid-message loses nothing.
struct PipeInbox {
  std::array<std::byte, sizeof(PipeHeader)> header_bytes{};
  std::size_t header_got = 0;
  PipeHeader header{};
  std::vector<std::byte> body;  // grows as bytes arrive (a forged length allocates nothing)
  std::size_t body_got = 0;
  bool complete = false;
  bool end_of_data = false;     // the peer closed: nothing more will arrive

  std::uint64_t body_size() const { return header.type_size + header.payload_size; }
  // Bytes of the message received so far, and its total, for messages.
  std::uint64_t received() const { return header_got + body_got; }
  void reset() {
    header_got = 0;
    body.clear();
    body.shrink_to_fit();
    body_got = 0;
    complete = false;
  }
};

namespace {

// Longest type name and payload a header may claim; more is not a message of ours.
constexpr std::uint32_t max_type_size = 4096;
constexpr std::uint64_t max_payload_size = std::uint64_t{1} << 40;
// The body buffer grows by at most this much (or doubles) per step.
constexpr std::size_t body_step = std::size_t{1} << 20;

// Milliseconds from now until `deadline` for poll(2), rounded up; -1 for no deadline.
int poll_timeout(Deadline deadline) {
  if (deadline == no_deadline) return -1;
  const auto left = deadline - std::chrono::steady_clock::now();
  if (left <= left.zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<decltype(ms)>(ms, INT_MAX));
}

}  // namespace
}  // namespace detail

// ---------------------------------------------------------------- Pipe

Pipe::Pipe(PipeOptions options) {
  auto name = std::make_shared<const std::string>(std::move(options.name));
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    throw Error("", fmt::format("pipe '{}'", detail::printable(*name)),
                fmt::format("cannot make the socket pair: {}", detail::os_reason(errno)));
  if (!options.duplex) {
    // Python: conn1 only receives, conn2 only sends.
    ::shutdown(fds[0], SHUT_WR);
    ::shutdown(fds[1], SHUT_RD);
  }
  first = Connection(fds[0], name, 0, true, options.duplex);
  second = Connection(fds[1], name, 1, options.duplex, true);
}

// ---------------------------------------------------------------- Connection

Connection::Connection() noexcept = default;

Connection::Connection(int fd, std::shared_ptr<const std::string> pipe_name, int index,
                       bool readable, bool writable)
    : fd_(fd), pipe_name_(std::move(pipe_name)), index_(index), readable_(readable),
      writable_(writable) {}

Connection::Connection(Connection&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      pipe_name_(other.pipe_name_),
      index_(other.index_),
      readable_(std::exchange(other.readable_, false)),
      writable_(std::exchange(other.writable_, false)),
      inbox_(std::move(other.inbox_)) {}

Connection& Connection::operator=(Connection&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    pipe_name_ = other.pipe_name_;
    index_ = other.index_;
    readable_ = std::exchange(other.readable_, false);
    writable_ = std::exchange(other.writable_, false);
    inbox_ = std::move(other.inbox_);
  }
  return *this;
}

Connection::~Connection() { close(); }

void Connection::close() noexcept {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));  // never retried: Linux frees it even on EINTR
  readable_ = false;
  writable_ = false;
  inbox_.reset();
}

std::string Connection::description() const {
  if (!pipe_name_) return "connection";
  return fmt::format("pipe '{}' end {}", detail::printable(*pipe_name_), index_);
}

namespace {

[[noreturn]] void throw_closed_here(const Connection& c, std::string_view call) {
  if (c.description() == "connection")
    throw PipeClosed("", c.description(),
                     fmt::format("{}: this Connection is empty (default-constructed, never an end "
                                 "of a Pipe)",
                                 call));
  throw PipeClosed("", c.description(),
                   fmt::format("{}: this end is closed (close() was called, or it was moved from)",
                               call));
}

}  // namespace

void Connection::send_message(std::vector<std::byte>& message, std::size_t type_size) {
  if (closed()) throw_closed_here(*this, "send");
  if (!writable_)
    throw InvalidArgument("", description(),
                          "send: this is the receiving end of a one-way pipe "
                          "(PipeOptions::duplex = false): it cannot send");
  const detail::PipeHeader header{
      detail::pipe_magic, static_cast<std::uint32_t>(type_size),
      message.size() - sizeof(detail::PipeHeader) - type_size,
      static_cast<std::int32_t>(::getpid()), 0};
  std::memcpy(message.data(), &header, sizeof header);
  std::size_t sent = 0;
  while (sent < message.size()) {
    const ssize_t n = ::send(fd_, message.data() + sent, message.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      throw PipeClosed("", description(),
                       sent == 0 ? std::string("send: the other end was closed or its process died")
                                 : fmt::format("send: the other end was closed or its process "
                                               "died in the middle of the message ({} of {} "
                                               "bytes sent)",
                                               sent, message.size()));
    throw Error("", description(), fmt::format("send: {}", detail::os_reason(errno)));
  }
}

bool Connection::fill(detail::Deadline deadline, std::string_view call) {
  if (!inbox_) inbox_ = std::make_unique<detail::PipeInbox>();
  detail::PipeInbox& in = *inbox_;
  std::size_t late_bytes = 0;  // read after the deadline had passed
  while (!in.complete) {
    if (in.end_of_data) {
      if (in.received() == 0)
        throw PipeClosed("", description(),
                         fmt::format("{}: the other end was closed or its process died", call));
      throw PipeClosed(
          "", description(),
          fmt::format("{}: the other end was closed or its process died in the middle of a "
                      "message ({} of {} bytes arrived)",
                      call, in.received(),
                      in.header_got == sizeof(detail::PipeHeader)
                          ? fmt::format("{}", sizeof(detail::PipeHeader) + in.body_size())
                          : std::string("?")));
    }
    // Where the next bytes go: the header, then the body.
    std::byte* into;
    std::size_t room;
    if (in.header_got < in.header_bytes.size()) {
      into = in.header_bytes.data() + in.header_got;
      room = in.header_bytes.size() - in.header_got;
    } else {
      const std::size_t total = static_cast<std::size_t>(in.body_size());
      if (in.body_got == in.body.size())
        in.body.resize(std::min(total, in.body_got + std::max(in.body_got, detail::body_step)));
      into = in.body.data() + in.body_got;
      room = in.body.size() - in.body_got;
    }
    const ssize_t n = ::recv(fd_, into, room, MSG_DONTWAIT);
    if (n == 0) {
      in.end_of_data = true;
      continue;
    }
    if (n < 0) {
      const int error = errno;
      if (error == EINTR) continue;
      if (error == ECONNRESET || error == EPIPE) {
        in.end_of_data = true;
        continue;
      }
      if (error != EAGAIN && error != EWOULDBLOCK)
        throw Error("", description(), fmt::format("{}: {}", call, detail::os_reason(error)));
      const int wait_ms = detail::poll_timeout(deadline);
      if (wait_ms == 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, wait_ms) < 0 && errno != EINTR)
        throw Error("", description(), fmt::format("{}: poll: {}", call, detail::os_reason(errno)));
      continue;
    }
    const auto got = static_cast<std::size_t>(n);
    if (in.header_got < in.header_bytes.size()) {
      in.header_got += got;
      if (in.header_got == in.header_bytes.size()) {
        std::memcpy(&in.header, in.header_bytes.data(), sizeof in.header);
        if (in.header.magic != detail::pipe_magic || in.header.type_size == 0 ||
            in.header.type_size > detail::max_type_size ||
            in.header.payload_size > detail::max_payload_size) {
          close();
          throw CorruptMessage("", description(),
                               fmt::format("{}: the bytes that arrived are not a procshare "
                                           "message (bad header); this end is now closed",
                                           call));
        }
        in.complete = in.body_size() == 0;
      }
    } else {
      in.body_got += got;
      in.complete = in.body_got == in.body_size();
    }
    // Once the deadline has passed, the call goes on only while bytes are already there,
    // and for at most body_step more: a sender that keeps refilling the socket cannot
    // hold poll() with no timeout for the whole of a large message.
    if (!in.complete && std::chrono::steady_clock::now() >= deadline) {
      late_bytes += got;
      if (late_bytes >= detail::body_step) return false;
    }
  }
  return true;
}

bool Connection::poll_until(detail::Deadline deadline) {
  if (closed()) throw_closed_here(*this, "poll");
  if (!readable_)
    throw InvalidArgument("", description(),
                          "poll: this is the sending end of a one-way pipe "
                          "(PipeOptions::duplex = false): it cannot receive");
  try {
    return fill(deadline, "poll");
  } catch (const PipeClosed&) {
    return true;  // recv() will not block: it throws PipeClosed
  }
}

std::span<const std::byte> Connection::take(detail::Deadline deadline, std::string_view call,
                                            std::string_view type) {
  if (closed()) throw_closed_here(*this, call);
  if (!readable_)
    throw InvalidArgument("", description(),
                          fmt::format("{}: this is the sending end of a one-way pipe "
                                      "(PipeOptions::duplex = false): it cannot receive",
                                      call));
  if (!fill(deadline, call))
    throw Timeout("", description(),
                  fmt::format("{}: no whole message arrived before the deadline{}", call,
                              inbox_->received() > 0
                                  ? fmt::format(" ({} bytes of one so far, kept for the next call)",
                                                inbox_->received())
                                  : std::string()));
  const detail::PipeInbox& in = *inbox_;
  const std::string_view sent_type(reinterpret_cast<const char*>(in.body.data()),
                                   in.header.type_size);
  if (sent_type != type)
    throw TypeMismatch("", description(),
                       fmt::format("{}<{}>: the next message was sent as {}; it stays in the pipe",
                                   call, detail::demangle(std::string(type).c_str()), detail::demangle(std::string(sent_type).c_str())));
  return {in.body.data() + in.header.type_size, static_cast<std::size_t>(in.header.payload_size)};
}

void Connection::discard() noexcept {
  if (inbox_) inbox_->reset();
}

void Connection::throw_undecodable(std::string_view call, std::string_view type, bool trailing) {
  const std::string what = fmt::format(
      "{}<{}>: the message's payload {} as that type; it was dropped", call, detail::demangle(std::string(type).c_str()),
      trailing ? "is longer than it decodes" : "runs out before it decodes");
  discard();
  throw CorruptMessage("", description(), what);
}

}  // namespace procshare
