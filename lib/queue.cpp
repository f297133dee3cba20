// Queue<T>: the non-template error paths.
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

}  // namespace procshare::detail
