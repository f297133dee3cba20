// Internal: the parent's two helpers, used only by PoolCore (pool.cpp): its allocator
// over the shared arena, and its reader of the workers' result rings and the death ring.
// Shared memory they write: ArenaSpace, none (it only reserves the segment's pages
// behind the arena); RingReader, each worker's ring_read and ring_space_sequence, and
// death_read.
#pragma once

#include "pool_internal.hpp"

#include <procshare/futex.hpp>
#include <procshare/segment.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <vector>

namespace procshare::detail {

// The parent's allocator over the pool's shared arena (only the parent allocates there):
// first fit over a free list of 64-byte-aligned blocks, merged again on release. The
// segment's pages behind the arena are reserved as the highest block in use grows.
class ArenaSpace {
public:
  // The arena lies at `at` in the segment and holds `bytes`, all free.
  void init(std::uint64_t at, std::uint64_t bytes) {
    at_ = at;
    free_space_.emplace(0, bytes);
  }
  // An offset of `bytes` free bytes in the arena, or nullopt.
  std::optional<std::uint64_t> allocate(std::uint64_t bytes) {
    bytes = align_up(std::max<std::uint64_t>(bytes, 1), 64);
    for (auto it = free_space_.begin(); it != free_space_.end(); ++it)
      if (it->second >= bytes) {
        const std::uint64_t offset = it->first, left = it->second - bytes;
        free_space_.erase(it);
        if (left) free_space_.emplace(offset + bytes, left);
        return offset;
      }
    return std::nullopt;
  }
  // Reserves the arena (of `capacity` bytes) up to `end` (in steps of 256 KiB). Throws
  // SegmentFull.
  void reserve_up_to(Segment& segment, std::uint64_t capacity, std::uint64_t end) {
    if (end <= reserved_) return;
    const std::uint64_t target = std::min(capacity, align_up(end, 256u << 10));
    reserve(segment, at_ + reserved_, target - reserved_);
    reserved_ = target;
  }
  void release(std::uint64_t offset, std::uint64_t bytes) {
    bytes = align_up(std::max<std::uint64_t>(bytes, 1), 64);
    auto it = free_space_.emplace(offset, bytes).first;
    if (auto next = std::next(it); next != free_space_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_space_.erase(next);
    }
    if (it != free_space_.begin()) {
      auto previous = std::prev(it);
      if (previous->first + previous->second == it->first) {
        previous->second += it->second;
        free_space_.erase(it);
      }
    }
  }

private:
  std::map<std::uint64_t, std::uint64_t> free_space_;  // arena offset -> bytes
  std::uint64_t at_ = 0;        // the arena's offset in the segment
  std::uint64_t reserved_ = 0;  // arena bytes reserved so far (from its start)
};

// The parent's reader of the workers' result rings and of the death ring: hands on every
// whole record, putting together those that came in pieces (see RecordType), and frees
// the ring space it read (waking a worker that waits for room).
class RingReader {
public:
  // Calls deliver(header, payload, size) for every whole record in every worker's ring,
  // then died(record) for every record in the death ring. A result, error, piece or
  // batch record for which admit(header) is false stays in its ring, with everything after it
  // (a stream's back-pressure, see Stream); returns whether that happened.
  template <class Deliver, class Died, class Admit>
  bool drain(PoolBlock& block, Deliver deliver, Died died, Admit admit) {
    bool refused = false;
    for (std::uint32_t i = 0; i < block.workers; ++i) {
      WorkerSlot& s = block.worker(i);
      std::uint64_t read = s.ring_read.load(std::memory_order_relaxed);
      const std::uint64_t write = s.ring_write.load(std::memory_order_acquire);
      if (read == write) continue;
      const std::byte* ring = block.ring(i);
      const std::uint64_t bytes = block.ring_bytes;
      if (pieces_.size() < block.workers) pieces_.resize(block.workers);
      Pieces& held = pieces_[i];
      bool stopped_here = false;
      while (read < write) {
        RecordHeader header{};
        std::memcpy(&header, ring + read % bytes, sizeof(std::uint32_t) * 2);
        if (header.size < 8 || header.size % 8 != 0 || header.size > bytes - read % bytes) break;  // corrupt
        if (header.type != static_cast<std::uint32_t>(RecordType::padding) && header.size >= sizeof header) {
          std::memcpy(&header, ring + read % bytes, sizeof header);
          const bool outcome = header.type == static_cast<std::uint32_t>(RecordType::result) ||
                               header.type == static_cast<std::uint32_t>(RecordType::error) ||
                               header.type == static_cast<std::uint32_t>(RecordType::piece) ||
                               header.type == static_cast<std::uint32_t>(RecordType::batch);
          if (outcome && !admit(header)) {
            refused = stopped_here = true;
            break;
          }
          const std::byte* payload = ring + read % bytes + sizeof header;
          const std::size_t size = std::min<std::size_t>(header.payload_length, header.size - sizeof header);
          const bool same_item = !held.bytes.empty() && held.job_id == header.job_id &&
                                 held.index == header.index && held.pid == header.pid;
          if (!same_item) held.bytes.clear();  // pieces whose final record never came
          if (header.type == static_cast<std::uint32_t>(RecordType::piece)) {
            held.job_id = header.job_id;
            held.index = header.index;
            held.pid = header.pid;
            held.bytes.insert(held.bytes.end(), payload, payload + size);
          } else if (same_item) {
            held.bytes.insert(held.bytes.end(), payload, payload + size);
            deliver(header, held.bytes.data(), held.bytes.size());
            held.bytes = {};
          } else {
            deliver(header, payload, size);
          }
        }
        read += header.size;
      }
      if (!stopped_here) read = write;
      s.ring_read.store(read, std::memory_order_seq_cst);  // (before ring_waiting is read)
      const std::uint32_t waiting = s.ring_waiting.load(std::memory_order_seq_cst);
      if (waiting != 0 && bytes - (write - read) >= waiting) {
        s.ring_space_sequence.fetch_add(1, std::memory_order_seq_cst);
        futex_wake(s.ring_space_sequence);
      }
    }
    std::uint64_t read = block.death_read.load(std::memory_order_relaxed);
    const std::uint64_t write = block.death_write.load(std::memory_order_acquire);
    for (; read < write; ++read) died(block.death_ring[read % death_ring_size]);
    block.death_read.store(read, std::memory_order_release);
    return refused;
  }

private:
  // Per worker slot: the pieces of a record that came in pieces, for the job, item and
  // worker pid of the first piece.
  struct Pieces {
    std::uint64_t job_id = 0, index = 0;
    std::int32_t pid = 0;
    std::vector<std::byte> bytes;
  };
  std::vector<Pieces> pieces_;
};

}  // namespace procshare::detail
