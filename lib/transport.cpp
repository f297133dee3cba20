// Transport's error paths: what a Reader throws when the bytes do not hold what is asked
// for, and what a Writer throws for a value it cannot write. Every message starts with
// "transport: " (the object part of the procshare::Error shape).
#include <procshare/transport.hpp>

#include "detail/names.hpp"

#include <fmt/format.h>

namespace procshare {

namespace {
constexpr const char* object = "transport";
}

void Reader::reject(std::string_view why) { throw CorruptSegment("", object, why); }

void Reader::throw_truncated(std::size_t needed, std::size_t left) {
  throw CorruptSegment("", object,
                       fmt::format("a serialized value runs past the end of its bytes ({} more "
                                   "needed, {} left)",
                                   needed, left));
}

namespace detail {

void throw_bad_count(std::uint64_t count, std::size_t element_bytes, std::size_t left) {
  if (element_bytes == 0)
    throw CorruptSegment("", object,
                         fmt::format("a serialized count of {} bits cannot fit in the {} bytes left",
                                     count, left));
  throw CorruptSegment("", object,
                       fmt::format("a serialized count of {} elements of at least {} byte{} each "
                                   "cannot fit in the {} bytes left",
                                   count, element_bytes, element_bytes == 1 ? "" : "s", left));
}

void throw_bad_flag(std::string_view what, unsigned value) {
  throw CorruptSegment("", object, fmt::format("{} is {}, not 0 or 1", what, value));
}

void throw_variant_index(std::uint64_t index, std::size_t alternatives) {
  throw CorruptSegment("", object,
                       fmt::format("a std::variant's index {} is out of range (it has {} "
                                   "alternatives)",
                                   index, alternatives));
}

void throw_valueless_variant() {
  throw InvalidArgument("", object, "a std::variant that is valueless by exception cannot be written");
}

void throw_repeated_key() {
  throw CorruptSegment("", object, "a map or set holds the same key twice");
}

void throw_unread(const std::type_info& type, std::size_t unread, std::uint64_t length) {
  throw CorruptSegment("", object,
                       fmt::format("transport<{}>::read left {} of its {} bytes unread (it must "
                                   "read what write wrote)",
                                   demangle(type.name()), unread, length));
}

}  // namespace detail
}  // namespace procshare
