// Internal: helpers shared by the library's .cpp files.
#pragma once

#include <procshare/segment.hpp>

#include <string>
#include <string_view>

namespace procshare::detail {

// `text` with non-printable bytes escaped as \xNN, for messages.
std::string printable(std::string_view text);
// "value<int64>", "array<int64, 8>", "flag", ...
std::string describe_type(ObjectKind kind, std::string_view type, std::uint64_t length);
// "KIND 'NAME'".
std::string describe_object(ObjectKind kind, std::string_view name);
// The OS's text for errno value `error`.
std::string os_reason(int error);
// A C++ type's readable name from its mangled one (typeid(x).name()); "unknown
// exception" for null or "".
std::string demangle(const char* mangled);

}  // namespace procshare::detail
