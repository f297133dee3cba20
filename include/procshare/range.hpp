// Range: the indices [first, end) as the items of a pool job (Python's range(first,
// end)); see Pool::map, map_async, imap, imap_unordered and find_first.
#pragma once

#include <cstdint>

namespace procshare {

// The indices [first, end) as the items of map, map_async and find_first (Python's
// range(first, end)): the task receives each index as a std::uint64_t. Nothing is made
// per item: find_first over Range{0, 1'000'000'000} uses the same memory as over ten.
struct Range {
  std::uint64_t first = 0;
  std::uint64_t end = 0;
  // How many indices (0 if end <= first).
  constexpr std::uint64_t size() const noexcept { return end > first ? end - first : 0; }
};

}  // namespace procshare
