// Internal: what a pool worker runs. A job's chunk is run by run_chunk<Kind, F, T, R,
// Args...>, instantiated in the parent (where the task's types are known) and called by
// the worker loop (lib/pool_worker.cpp) through ChunkContext, which holds the chunk's
// items, arguments and result slots and the words it publishes its progress to.
#pragma once

#include <procshare/range.hpp>
#include <procshare/transport.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace procshare::detail {


template <class F> consteval bool check_stateless() {
  static_assert(std::is_empty_v<F> || std::is_pointer_v<F>,
                "procshare::Pool: a task must be a function pointer or a capture-less lambda: "
                "a worker runs it in another process, where captured state would not exist. "
                "Pass data as explicit arguments instead");
  return true;
}

// Whether task F, with items and arguments Ts and result R, passes check_stateless and
// check_transportable: the pool's calls compile their bodies only then, so that a failed
// check is the only error the compiler reports.
template <class F, class R, class... Ts>
inline constexpr bool task_fits_v = (std::is_empty_v<F> || std::is_pointer_v<F>) &&
                                    (Transportable<Ts> && ...) &&
                                    (std::is_void_v<R> || Transportable<R>);

// Of a job over items I (range.hpp) with task F and arguments Args: what the task
// returns, whether it fits (as task_fits_v), and the checks with readable errors.
template <class I, class F, class... Args>
using task_result_t = std::invoke_result_t<F, typename ItemsOf<I>::argument, const Args&...>;
template <class I, class F, class R, class... Args>
inline constexpr bool items_fit_v =
    task_fits_v<F, R, Args...> &&
    (ItemsOf<I>::is_range || Transportable<typename ItemsOf<I>::job_type>);
template <class I, class F, class... Args> consteval bool check_items() {
  if constexpr (ItemsOf<I>::is_range)
    return check_stateless<F>() && (check_transportable<Args>() && ...);
  else
    return check_stateless<F>() && check_transportable<typename ItemsOf<I>::job_type>() &&
           (check_transportable<Args>() && ...);
}

// ---------------------------------------------------------------- running tasks

using AnyFunction = void (*)();

struct ChunkContext;

// What the worker loop (lib/) offers a running chunk for the rare events.
struct ChunkOps {
  // A variable-size result for `index`.
  void (*emit)(ChunkContext&, std::uint64_t index, const std::byte* data, std::size_t size);
  // Item `index` threw an exception of (mangled) type `type` with `message`.
  void (*fail)(ChunkContext&, std::uint64_t index, const char* type, const char* message);
  // find_first: item `index` matched.
  void (*found)(ChunkContext&, std::uint64_t index);
  // A stream's fixed-size result for `index`, held back to be sent in a batch.
  void (*batch)(ChunkContext&, std::uint64_t index, const void* data, std::size_t size);
  // Sends the held-back results; the items before `covered` need no more (they are over
  // and were not batched: failed, skipped).
  void (*flush)(ChunkContext&, std::uint64_t covered);
};

// One claimed range of one job, as a worker runs it. Per item, run_chunk publishes its
// progress with one store into the worker's own slot: 2i+1 while item first+i runs, 2i+2
// once it is over, so a supervisor settling a death knows exactly which item was cut.
struct ChunkContext {
  const ChunkOps* ops;
  void* worker;                        // the worker loop's own state
  AnyFunction function;                // the task, when it is a function pointer
  const std::byte* items;              // fixed-size items, or serialized ones
  const std::uint64_t* item_offsets;   // offsets of serialized items (null when fixed)
  std::uint64_t items_size;            // bytes at `items`
  const std::byte* args;               // the serialized argument tuple
  std::uint64_t args_size;
  std::byte* results;                  // fixed-size result slots (null when variable)
  std::uint64_t first;                 // the range [first, end)
  std::uint64_t end;
  std::atomic<std::uint64_t>* progress;       // the worker slot's progress word
  std::atomic<std::uint64_t>* skipped;        // the worker slot's skipped count
  const std::atomic<std::uint32_t>* stop;     // the job's stop flag
  const std::atomic<std::uint64_t>* best;     // find_first's best match so far
  std::uint64_t range_first;                  // a Range job: item k is range_first + k
  // A stream's fixed-size results held back for a batch (in the worker's buffer): the
  // next one for item batch_next goes at batch_at while that is below batch_end; any
  // other goes through ops->batch, which also flushes the batch when it is full or old.
  std::byte* batch_at = nullptr;
  std::byte* batch_end = nullptr;
  std::uint64_t batch_next = 0;
};

using ChunkFn = void (*)(ChunkContext&);

template <class F, class... A> decltype(auto) call_task(AnyFunction function, A&&... a) {
  if constexpr (std::is_pointer_v<F>)
    return reinterpret_cast<F>(function)(std::forward<A>(a)...);
  else
    return F{}(std::forward<A>(a)...);
}

// The item type a task receives for items of type T (a Range's are indices).
template <class T> using item_t = std::conditional_t<std::is_same_v<T, Range>, std::uint64_t, T>;

template <class T> item_t<T> read_item(const ChunkContext& c, std::uint64_t index) {
  if constexpr (std::is_same_v<T, Range>) {
    return c.range_first + index;
  } else if constexpr (Transport<T>::fixed) {
    T item;
    std::memcpy(&item, c.items + index * sizeof(T), sizeof(T));
    return item;
  } else {
    Reader r{c.items + c.item_offsets[index], c.items + c.items_size};
    return Transport<T>::read(r);
  }
}

// The largest fixed-size result a stream sends in batches (larger ones travel as results
// of their own, as variable-size ones do).
inline constexpr std::size_t batched_result_bytes = 4096;

template <class R> void store_result(ChunkContext& c, std::uint64_t index, const R& value) {
  if constexpr (Transport<R>::fixed) {
    if (c.results != nullptr) {
      std::memcpy(c.results + index * sizeof(R), &value, sizeof(R));
      return;
    }
    if constexpr (sizeof(R) <= batched_result_bytes) {  // a stream: in batches
      if (index == c.batch_next && c.batch_at != c.batch_end) {
        std::memcpy(c.batch_at, &value, sizeof(R));
        c.batch_at += sizeof(R);
        ++c.batch_next;
      } else {
        c.ops->batch(c, index, &value, sizeof(R));
      }
      return;
    }
  }
  std::vector<std::byte> bytes;
  Writer w{bytes};
  Transport<R>::write(w, value);
  c.ops->emit(c, index, bytes.data(), bytes.size());
}

enum class JobKind : std::uint32_t { submit = 1, map = 2, find_first = 3 };

// Runs one chunk of a job: submit (T = void: no item), map, or find_first (R = bool
// from the predicate).
template <JobKind Kind, class F, class T, class R, class... Args>
void run_chunk(ChunkContext& c) {
  // The arguments are read inside the first item's try, so that a user's transport<T>::read
  // that throws fails items (each with its exception) rather than the worker.
  std::optional<std::tuple<Args...>> args;
  std::uint64_t skipped = 0;
  for (std::uint64_t k = c.first; k < c.end; ++k) {
    const std::uint64_t step = 2 * (k - c.first);
    if (c.stop->load(std::memory_order_relaxed) != 0 || k > c.best->load(std::memory_order_relaxed)) {
      // The rest of the chunk is stopped, or above the match, too (stop is never lowered,
      // best never raised): skip it at once.
      c.ops->flush(c, c.end);
      skipped += c.end - k;
      c.skipped->store(skipped, std::memory_order_relaxed);
      c.progress->store(2 * (c.end - c.first), std::memory_order_release);
      break;
    }
    c.progress->store(step + 1, std::memory_order_release);  // item k runs
    try {
      if (!args) {
        Reader args_reader{c.args, c.args + c.args_size};
        args.emplace(Transport<std::tuple<Args...>>::read(args_reader));
      }
      auto call = [&](auto&&... item) -> decltype(auto) {
        return std::apply(
            [&](auto&... a) -> decltype(auto) { return call_task<F>(c.function, item..., a...); },
            *args);
      };
      if constexpr (Kind == JobKind::submit) {
        if constexpr (std::is_void_v<R>)
          call();
        else
          store_result<R>(c, 0, call());
      } else if constexpr (Kind == JobKind::map) {
        if constexpr (std::is_void_v<R>)
          call(read_item<T>(c, k));
        else
          store_result<R>(c, k, call(read_item<T>(c, k)));
      } else {
        if (call(read_item<T>(c, k))) c.ops->found(c, k);
      }
    } catch (const std::exception& e) {
      c.ops->fail(c, k, typeid(e).name(), e.what());
    } catch (...) {
      c.ops->fail(c, k, "", "an exception not derived from std::exception");
    }
    c.progress->store(step + 2, std::memory_order_release);  // item k is over
  }
}

}  // namespace procshare::detail
