// Queue<T>: the non-template error paths.
#include <procshare/containers.hpp>
#include <procshare/queue.hpp>

#include "detail/names.hpp"

#include <fmt/format.h>

namespace procshare::detail {

void throw_item_too_long(const HandleCore& handle, std::size_t bytes, std::size_t max) {
  throw InvalidArgument(segment_name(handle), describe(handle, ObjectKind::queue),
                        fmt::format("push of a {}-byte string: items hold at most {} bytes",
                                    bytes, max));
}

void throw_queue_closed(const HandleCore& handle, std::string_view operation) {
  throw QueueClosed(segment_name(handle), describe(handle, ObjectKind::queue),
                    fmt::format("{}: the queue is closed{}", operation,
                                operation == "pop" ? " and empty" : ""));
}

void throw_bad_queue(const Segment& segment, std::string_view name, std::string_view why) {
  throw InvalidArgument(segment.name(), describe_object(ObjectKind::queue, name), why);
}

void throw_container_full(const HandleCore& handle, ObjectKind kind, std::size_t free,
                          std::size_t capacity) {
  throw SegmentFull(segment_name(handle), describe(handle, kind),
                    fmt::format("its arena is full ({} of {} bytes free); nothing was changed",
                                free, capacity));
}

void throw_container_index(const HandleCore& handle, ObjectKind kind, std::size_t index,
                           std::size_t size) {
  throw IndexOutOfRange(segment_name(handle), describe(handle, kind),
                        fmt::format("index {} out of range (size {})", index, size));
}

void throw_container_corrupt(const HandleCore& handle, ObjectKind kind, std::string_view why) {
  throw CorruptSegment(segment_name(handle), describe(handle, kind), why);
}

void throw_small_capacity(const Segment& segment, ObjectKind kind, std::string_view name,
                          std::size_t capacity) {
  throw InvalidArgument(segment.name(), describe_object(kind, name),
                        fmt::format("capacity {} bytes is too small (at least 1024)", capacity));
}

}  // namespace procshare::detail
