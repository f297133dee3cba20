// Range and Items: what a pool job runs over (Pool::map, map_async, imap, imap_unordered
// and find_first): the indices [first, end) (Python's range(first, end)), or a contiguous
// range of values.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ranges>
#include <span>
#include <type_traits>

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

// The items of a pool job: a Range, or a contiguous sized range of transportable values
// (std::vector, std::array, std::span, a C array, ...), which the call copies into
// shared memory before it returns (so a temporary is fine, even for map_async).
template <class I>
concept Items = std::same_as<std::remove_cvref_t<I>, Range> ||
                (std::ranges::contiguous_range<const I&> && std::ranges::sized_range<const I&>);

namespace detail {

// Of items I: the type a job is made of (the values' type, or Range itself), what a task
// receives per item, and what find_first returns for one.
template <class I> struct ItemsOf {
  using job_type = std::remove_cv_t<std::ranges::range_value_t<const I&>>;
  using argument = const job_type&;
  using value = job_type;
  static constexpr bool is_range = false;
  static std::uint64_t size(const I& items) { return std::ranges::size(items); }
  static std::span<const job_type> span(const I& items) {
    return {std::ranges::data(items), std::ranges::size(items)};
  }
  static value at(const I& items, std::size_t position) { return std::ranges::data(items)[position]; }
};
template <> struct ItemsOf<Range> {
  using job_type = Range;
  using argument = std::uint64_t;
  using value = std::uint64_t;
  static constexpr bool is_range = true;
  static std::uint64_t size(const Range& items) { return items.size(); }
  static value at(const Range& items, std::size_t position) { return items.first + position; }
};

}  // namespace detail

}  // namespace procshare
