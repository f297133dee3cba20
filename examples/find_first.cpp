// find_first: "find the first value in a list that meets the requirement, then stop all
// workers". Workers claim items in ascending order and skip everything above the best
// match so far, so the answer is the lowest matching index on every run, however the
// workers are scheduled, and most of the list is never looked at.
//
// Usage: find_first [items=5000000]
// Prints the first perfect square above 10^12 hidden in a generated list, its index,
// and how many items were evaluated; exits 1 if none was found.
#include <procshare/procshare.hpp>

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

// The requirement: a perfect square above 10^12. Counts the items it looks at.
static bool is_big_square(const std::int64_t& x, procshare::Atomic<std::int64_t> evaluated) {
  evaluated.fetch_add(1, std::memory_order_relaxed);
  if (x <= 1'000'000'000'000) return false;
  const auto root = static_cast<std::int64_t>(std::sqrt(static_cast<double>(x)));
  return root * root == x || (root + 1) * (root + 1) == x;
}

int main(int argc, char** argv) {
  const std::size_t items = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 5'000'000;
  std::mt19937_64 random(42);  // the same list every run
  std::vector<std::int64_t> values(items);
  for (auto& v : values) v = static_cast<std::int64_t>(random() % 4'000'000'000'000);
  values.at(items / 3) = 1'200'000 * std::int64_t{1'200'000};  // plant a few matches
  values.at(items / 2) = 1'500'000 * std::int64_t{1'500'000};

  auto segment = procshare::Segment::create(fmt::format("find-first-{}", ::getpid()), 1 << 16);
  auto evaluated = segment.create_atomic<std::int64_t>("evaluated", 0);
  procshare::Pool pool({.workers = 2});
  const auto found = pool.find_first(values, is_big_square, evaluated);
  if (!found) {
    fmt::print("no match among {} items\n", items);
    return 1;
  }
  fmt::print("first match: index {}, value {} ({} of {} items evaluated)\n", found->first,
             found->second, evaluated, items);
  return 0;
}
