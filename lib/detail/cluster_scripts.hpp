// Cluster: the Lua scripts that are the only writers of a job's state in the engine
// (Redis runs each atomically). Every script gets the job's eleven keys, in this order:
//
//   KEYS[1] psj:{J}:meta     hash    spec (kind n chunk items args task results keep), epoch,
//                                    lease (the creating host's, ms), state
//                                    (running|done|stopped), ended (server ms), stop (who stopped it,
//                                    "" if nobody), next (first item never handed out),
//                                    made (chunks made so far), best (find_first's match,
//                                    n if none), fence, done_items failed_items
//                                    skipped_items done_chunks, redelivered (chunks handed
//                                    out again), fenced (calls refused for a lease held
//                                    elsewhere: late renewals and completions; a call
//                                    retried after its reply was lost counts again), created
//   KEYS[2] psj:{J}:leases   zset    chunk -> lease deadline (server ms, from TIME)
//   KEYS[3] psj:{J}:owner    hash    chunk -> the token of its lease holder
//   KEYS[4] psj:{J}:partial  hash    chunk -> items its holder finished so far (an overwrite)
//   KEYS[5] psj:{J}:done     bitmap  chunk -> completed
//   KEYS[6] psj:{J}:doneby   hash    chunk -> the token that completed it (retries succeed)
//   KEYS[7] psj:{J}:fail     zset    position -> failure record (see lib/cluster.cpp)
//   KEYS[8] psj:{J}:res      hash    chunk -> its serialized results (map; only chunks
//                                    whose results take longer to compute than to move,
//                                    unless the spec's results is 'engine')
//   KEYS[9] psj:{J}:hosts    hash    host -> last seen (server ms); a host's call answered
//                                    'ended' counts: a stop waits for hosts seen after it
//   KEYS[10] psj:{J}:chunks  hash    chunk -> "first end": its items
//   KEYS[11] psj:{J}:claims  hash    host -> its last claim: "nonce chunk token first end
//                                    [option's chunk token first end]" (a claim retried
//                                    after its reply was lost gets the same chunk (and
//                                    option) again, not a second one)
//
// Chunks are numbered as they are made, from the items in ascending order: a chunk's
// first item grows with its number (except the free chunks below, which only a map has:
// find_first, whose end relies on the order, takes no options). A job with a fixed chunk
// size makes chunks of that size; otherwise each claim asks for a size (the host aims at
// ~50 ms of work from what its earlier chunks took), cut to the remaining items / (2 x
// the hosts seen within a lease) so that every host gets some, but never below ~1/8 of
// it (the last chunks shrink, without a tail of tiny chunks that would each cost round
// trips); when what is left fits in the asked size, it is one chunk.
//
// A host's first chunk is small (1/256 of the items: it times it), so an adaptive map's
// join also hands it an option, the next chunk, sized by the share alone: the host starts
// it the moment its first chunk ends, keeping what its timing says, and the completion it
// sends meanwhile shrinks the option to that (its first chunk's completion is then off the
// critical path: no round trip between the two). What it did not keep goes back to the
// items never handed out if nothing was made after it, else it becomes a free chunk: held
// by nobody, with a lease deadline of 0, so the next claim takes it (the part it asks for,
// the rest stays free), and it is not counted as redelivered.
//
// Every script but join also gets ARGV[1], the epoch its host joined (a random id made
// with the job): a job whose meta is gone or has another epoch was lost (a restart
// without persistence, or made anew), and the script answers {'lost'} rather than
// touch it. Counts move only in
// complete, under the lease holder's token, in the same step as the done bit: exactly
// once, however often a chunk ran. A job that ends (done, stopped) publishes it on the
// channel psj:{J}:ctl and its keys expire `keep` ms later (a stopped job's: from the
// stop's second call, see stop).
#pragma once

#include <array>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace procshare::detail::scripts {

// Shared by every script.
inline constexpr const char* prelude = R"lua(
local meta, leases, owner, partial, done, doneby, fail, res, hosts, chunks, claims =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local channel = string.sub(meta, 1, -5) .. 'ctl'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function lost() return redis.call('HGET', meta, 'epoch') ~= ARGV[1] end
-- lost(), where an epoch of '' stands for whichever job has this name (procshare-ctl)
local function lost_by_name()
  if ARGV[1] == '' then return redis.call('EXISTS', meta) == 0 end
  return lost()
end
local function int(x) return string.format('%d', x) end
local function first_of(c) return tonumber(string.match(redis.call('HGET', chunks, c), '^(%d+)')) end
-- Makes the job's keys expire `keep` ms from now (`keep`: the meta's, if the caller read
-- it already).
local function expire_keys(keep)
  keep = keep or redis.call('HGET', meta, 'keep')
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], keep) end
end
-- The same for a job that ended without (a stop's second call not made: see stop).
local function expire_ended()
  if redis.call('PTTL', meta) == -1 and redis.call('HGET', meta, 'state') ~= 'running' then expire_keys() end
end
-- The reply to a call on a job that is over: {'ended', state, stop, best, failed_items};
-- `host` (the caller) is recorded as seen: it has learned of the end (what a stop waits for).
local function ended(host)
  -- (not once the keys expired: HSET would make hosts anew, never to expire)
  if host and redis.call('EXISTS', hosts) == 1 then redis.call('HSET', hosts, host, now_ms()) end
  expire_ended()
  local m = redis.call('HMGET', meta, 'state', 'stop', 'best', 'failed_items')
  return {'ended', m[1], m[2], m[3], m[4]}
end
-- Ends the job.
local function finish(state, message, keep)
  redis.call('HSET', meta, 'state', state, 'ended', now_ms())
  expire_keys(keep)
  redis.call('PUBLISH', channel, message)
end
-- The hosts seen within a lease (one that left no longer takes a share).
local function live_hosts(lease_ms, now)
  local live, seen = 0, redis.call('HVALS', hosts)
  for i = 1, #seen do
    if tonumber(seen[i]) >= now - tonumber(lease_ms) then live = live + 1 end
  end
  return math.max(1, live)
end
-- A host's share of `rest` items: 1 / (2 x the live hosts), at least 1.
local function share_of(rest, lease_ms, now)
  return math.max(1, math.ceil(rest / (2 * live_hosts(lease_ms, now))))
end
-- An adaptive chunk's size, of `rest` items not yet in a chunk, for a host asking for
-- `want` (see the top of detail/cluster_scripts.hpp).
local function size_for(rest, want, least, lease_ms, now)
  if want >= rest then return rest end  -- (less than the host's ~50 ms: sharing it gains little)
  return math.max(least, math.min(want, share_of(rest, lease_ms, now)))
end
-- Makes chunk number `made` of items [first, last), held by nobody and free for the next
-- claim (the rest of an option its host did not keep, or of a free chunk a claim cut).
local function free_chunk(made, first, last)
  redis.call('HSET', chunks, int(made), int(first) .. ' ' .. int(last))
  redis.call('HSET', meta, 'made', int(made + 1))
  redis.call('ZADD', leases, 0, int(made))
end
-- Claims a chunk for `host` (see claim below); the job is running. `now`: the server's
-- ms, if the caller read it already. With `option` > 0 (a join), a new chunk comes with
-- an option: the next chunk, of up to `option` items (the share of the rest), under its
-- own token and the same deadline; its host shrinks it to what its timing says when it
-- completes the first (shrink, below).
local function claim_next(host, lease_ms, nonce, want, least, now, option)
  local m = redis.call('HMGET', meta, 'best', 'n', 'next', 'made', 'chunk', 'fence', 'redelivered')
  now = now or now_ms()
  want, least = tonumber(want), tonumber(least)
  redis.call('HSET', hosts, host, now)
  local last = redis.call('HGET', claims, host)
  if last then  -- the same claim again (its reply was lost): the same chunk (and option), if still held
    local n, c, token, f, e, rest = string.match(last, '^(%S+) (%d+) (%S+) (%d+) (%d+)(.*)$')
    if n == nonce and redis.call('HGET', owner, c) == token then
      redis.call('ZADD', leases, 'XX', now + tonumber(lease_ms), c)
      local reply = {'chunk', c, token, f, e, m[1]}
      local oc, otoken, of, oe = string.match(rest, '^ (%d+) (%S+) (%d+) (%d+)$')
      if oc and redis.call('HGET', owner, oc) == otoken then
        redis.call('ZADD', leases, 'XX', now + tonumber(lease_ms), oc)
        for _, v in ipairs({oc, otoken, of, oe}) do reply[#reply + 1] = v end
      end
      return reply
    end
  end
  local best, n, next, made = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
  local c, first, last, fresh
  while true do
    local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 1)[1]
    if not expired then break end
    local f, e = string.match(redis.call('HGET', chunks, expired), '^(%d+) (%d+)$')
    if tonumber(f) <= best then
      c, first, last = tonumber(expired), tonumber(f), tonumber(e)
      break
    end
    -- above the best match: it need not run any more
    redis.call('ZREM', leases, expired)
    redis.call('HDEL', owner, expired)
    redis.call('HDEL', partial, expired)
  end
  local fence = tonumber(m[6]) + 1
  if c and redis.call('HEXISTS', owner, int(c)) == 1 then  -- a rerun: its progress starts again
    redis.call('HSET', meta, 'fence', fence, 'redelivered', tonumber(m[7]) + 1)
    redis.call('HSET', partial, int(c), 0)
  elseif c then  -- a free chunk: what this host asks for of it, the rest stays free
    local size = tonumber(m[5])
    if size == 0 then size = size_for(n - next + last - first, want, least, lease_ms, now) end
    if size < last - first then
      free_chunk(made, first + size, last)
      last = first + size
      redis.call('HSET', chunks, int(c), int(first) .. ' ' .. int(last))
    end
    redis.call('HSET', meta, 'fence', fence)
  else
    if next >= n or next > best then return {'wait', m[1]} end
    local size = tonumber(m[5])
    if size == 0 then size = size_for(n - next, want, least, lease_ms, now) end
    c, first, last, fresh = made, next, math.min(n, next + size), true
    redis.call('HSET', meta, 'next', int(last), 'made', int(c + 1), 'fence', fence)
    redis.call('HSET', chunks, int(c), int(first) .. ' ' .. int(last))
  end
  local deadline = now + tonumber(lease_ms)
  local token = int(fence) .. ':' .. host .. ':' .. nonce
  redis.call('ZADD', leases, deadline, int(c))
  redis.call('HSET', owner, int(c), token)
  local record = nonce .. ' ' .. int(c) .. ' ' .. token .. ' ' .. int(first) .. ' ' .. int(last)
  local reply = {'chunk', int(c), token, int(first), int(last), m[1]}
  option = tonumber(option or 0)
  if fresh and option > 0 and last < n and last <= best then
    local size = math.min(option, share_of(n - last, lease_ms, now))
    local oc, of, oe, otoken = c + 1, last, math.min(n, last + size), int(fence + 1) .. ':' .. host .. ':' .. nonce
    redis.call('HSET', meta, 'next', int(oe), 'made', int(oc + 1), 'fence', fence + 1)
    redis.call('HSET', chunks, int(oc), int(of) .. ' ' .. int(oe))
    redis.call('ZADD', leases, deadline, int(oc))
    redis.call('HSET', owner, int(oc), otoken)
    for _, v in ipairs({int(oc), otoken, int(of), int(oe)}) do reply[#reply + 1] = v end
    record = record .. ' ' .. int(oc) .. ' ' .. otoken .. ' ' .. int(of) .. ' ' .. int(oe)
  end
  redis.call('HSET', claims, host, record)
  return reply
end
-- The holder of option `c` (token `token`) keeps its items below `keep`: the rest goes
-- back to the items never handed out when no chunk was made after it, else it is a free
-- chunk. Once only (again, or for a lease held elsewhere, it does nothing).
local function shrink(c, token, keep)
  if c == '' or redis.call('HGET', owner, c) ~= token then return false end
  local f, e = string.match(redis.call('HGET', chunks, c), '^(%d+) (%d+)$')
  f, e, keep = tonumber(f), tonumber(e), tonumber(keep)
  if keep <= f or keep >= e then return false end
  redis.call('HSET', chunks, c, int(f) .. ' ' .. int(keep))
  local m = redis.call('HMGET', meta, 'next', 'made')
  if tonumber(m[1]) == e then
    redis.call('HSET', meta, 'next', int(keep))
  else
    free_chunk(tonumber(m[2]), keep, e)
  end
  return true
end
)lua";

// join(epoch, kind, n, chunk, items, args, task, results, host, keep, lease_ms, nonce,
// size, least, option): makes the job (ARGV[1] becomes its epoch) or checks that the
// caller's spec is the job's; then claims the host's first chunk, with an option of up to
// `option` items ('0': none).
// -> {'ok', epoch, state, stop, best, failed_items[, claim's reply]}
//    | {'mismatch', field, the job's value}
inline constexpr const char* join = R"lua(
local fields = {'kind', 'n', 'chunk', 'items', 'args', 'task', 'results'}
local now = now_ms()
local job = redis.call('HMGET', meta, 'epoch', 'state', 'stop', 'best', 'failed_items', unpack(fields))
if not job[1] then
  redis.call('HSET', meta, 'epoch', ARGV[1], 'kind', ARGV[2], 'n', ARGV[3], 'chunk', ARGV[4],
    'items', ARGV[5], 'args', ARGV[6], 'task', ARGV[7], 'results', ARGV[8], 'keep', ARGV[10],
    'lease', ARGV[11], 'state', 'running',
    'stop', '', 'next', 0, 'made', 0, 'best', ARGV[3], 'fence', 0, 'done_items', 0,
    'failed_items', 0, 'skipped_items', 0, 'done_chunks', 0, 'redelivered', 0, 'fenced', 0,
    'created', now)
  job = {ARGV[1], 'running', '', ARGV[3], '0'}
  if tonumber(ARGV[3]) == 0 then
    redis.call('HSET', hosts, ARGV[9], now)  -- (before finish: it must expire too)
    finish('done', 'done', ARGV[10])
    job[2] = 'done'
  end
else
  if job[2] ~= 'running' then expire_ended() end  -- (whoever joins an ended job: see stop)
  for i, field in ipairs(fields) do
    if job[5 + i] ~= ARGV[i + 1] then return {'mismatch', field, job[5 + i] or ''} end
  end
end
if job[2] == 'running' then  -- and the host's first chunk, as claim would (one round trip)
  return {'ok', job[1], job[2], job[3], job[4], job[5], claim_next(ARGV[9], ARGV[11], ARGV[12], ARGV[13], ARGV[14], now, ARGV[15])}
end
redis.call('HSET', hosts, ARGV[9], now)
return {'ok', job[1], job[2], job[3], job[4], job[5]}
)lua";

// claim(epoch, host, lease_ms, nonce, size, least): the lowest-deadline expired lease
// first (rerun: redelivered), else a new chunk of the next items (`size` of them, but
// not more than the share below, nor fewer than `least`);
// never a chunk above find_first's best match. A new token each time (fence counter, host
// and a nonce: unique even after a rollback).
// -> {'chunk', c, token, first, end, best[, option: c, token, first, end]}
//    | {'wait', best} (nothing free now)
//    | {'ended', state, stop, best, failed} | {'lost'}
inline constexpr const char* claim = R"lua(
if lost() then return {'lost'} end
if redis.call('HGET', meta, 'state') ~= 'running' then return ended(ARGV[2]) end
return claim_next(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
)lua";

// heartbeat(epoch, host, lease_ms, [chunk, token, items done]...): renews each lease the
// caller still holds and records its partial progress (an overwrite: a retry or a
// zombie cannot inflate it); a lease_ms of 0 hands the chunks back (a host that leaves).
// -> {'ok', best, {1 kept | 0 lost, ...}} | {'ended', state, stop, best, failed} | {'lost'}
inline constexpr const char* heartbeat = R"lua(
if lost() then return {'lost'} end
local m = redis.call('HMGET', meta, 'state', 'stop', 'best')
if m[1] ~= 'running' then return ended(ARGV[2]) end
local now = now_ms()
redis.call('HSET', hosts, ARGV[2], now)
local kept = {}
for i = 4, #ARGV, 3 do
  if redis.call('HGET', owner, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', leases, 'XX', now + tonumber(ARGV[3]), ARGV[i])
    redis.call('HSET', partial, ARGV[i], ARGV[i + 2])
    kept[#kept + 1] = 1
  elseif redis.call('HGET', doneby, ARGV[i]) == ARGV[i + 1] then
    kept[#kept + 1] = 1  -- (its holder completed it meanwhile: a renewal that crossed it)
  else  -- its lease went elsewhere: refused, and counted as fenced (as a completion is)
    redis.call('HINCRBY', meta, 'fenced', 1)
    kept[#kept + 1] = 0
  end
end
return {'ok', m[3], kept}
)lua";

// complete(epoch, chunk, token, done, failed, skipped, found, results, claim, host,
// lease_ms, nonce, size, least, option, option's token, keep, [position, record]...):
// first shrinks the host's option (if named: '' for none) to the items below `keep`;
// then counts a chunk once, for its
// current lease holder only (a retry of an accepted completion succeeds again; anybody
// else's is refused and counted as fenced). Lowers find_first's best match; ends the job
// when it is done (see below). With claim = 1, then claims the caller's next chunk as
// claim does (one round trip for both).
// -> {'ok', state, best, failed_items[, claim's reply]} | {'fenced'[, claim's reply]}
//    | {'ended', state, stop, best, failed} | {'lost'}
inline constexpr const char* complete = R"lua(
local c = ARGV[2]
local fields = {'epoch', 'state', 'stop', 'best', 'made', 'next', 'n', 'done_items', 'failed_items',
  'skipped_items', 'done_chunks', 'keep', 'fenced'}
local m = redis.call('HMGET', meta, unpack(fields))
if m[1] ~= ARGV[1] then return {'lost'} end
if m[2] == 'running' and shrink(ARGV[15], ARGV[16], ARGV[17]) then m = redis.call('HMGET', meta, unpack(fields)) end
local function next_claim(reply, state)
  if ARGV[9] == '1' and state == 'running' then
    reply[#reply + 1] = claim_next(ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14])
  end
  return reply
end
if redis.call('HGET', doneby, c) == ARGV[3] then  -- (a retry of an accepted completion)
  return next_claim({'ok', m[2], m[4], m[9]}, m[2])
end
if m[2] ~= 'running' then return ended(ARGV[10]) end
if redis.call('HGET', owner, c) ~= ARGV[3] then
  redis.call('HSET', meta, 'fenced', tonumber(m[13]) + 1)
  return next_claim({'fenced'}, m[2])
end
redis.call('ZREM', leases, c)
redis.call('HDEL', owner, c)
redis.call('HDEL', partial, c)
redis.call('SETBIT', done, c, 1)
redis.call('HSET', doneby, c, ARGV[3])
local failed = int(tonumber(m[9]) + tonumber(ARGV[5]))
local best, found = tonumber(m[4]), tonumber(ARGV[7])
if found >= 0 and found < best then best = found end
redis.call('HSET', meta, 'done_items', int(tonumber(m[8]) + tonumber(ARGV[4])), 'failed_items', failed,
  'skipped_items', int(tonumber(m[10]) + tonumber(ARGV[6])), 'done_chunks', int(tonumber(m[11]) + 1),
  'best', int(best))
for i = 18, #ARGV, 2 do redis.call('ZADD', fail, ARGV[i], ARGV[i + 1]) end
if ARGV[8] ~= '' then redis.call('HSET', res, c, ARGV[8]) end
if best < tonumber(m[4]) then redis.call('PUBLISH', channel, 'best ' .. int(best)) end
-- Done once nothing is left to hand out and every chunk that starts at or below the best
-- match (every chunk, without one) is done: chunks start in the order they were made.
local n, next, made = tonumber(m[7]), tonumber(m[6]), tonumber(m[5])
if next >= n or next > best then
  local open = redis.call('BITPOS', done, 0)
  if open >= made or first_of(open) > best then
    finish('done', 'done', m[12])
    return {'ok', 'done', int(best), failed}
  end
end
return next_claim({'ok', 'running', int(best), failed}, 'running')
)lua";

// stop(epoch, who): stops a running job; the first stop's "who" is kept. An epoch of ''
// stops the job of that name, whichever it is (procshare-ctl: one round trip). It only
// ends the job and publishes it: the engine sends the message (and the reply) once the
// script returns, and making eleven keys expire would take longer than the rest; the
// caller makes them expire with a second call (expire, below), after the message left.
// Should that call not come, the agents' acknowledgements (seen), any later call of a host
// (ended), and a join under the job's name make them expire; with none of those (no host
// left, and the stopper died between its two calls) they stay until `procshare-ctl
// cluster clean --yes`.
// -> {'ok', who} | {'ended', state, stop, best, failed} | {'lost'}
inline constexpr const char* stop = R"lua(
if lost_by_name() then return {'lost'} end
if redis.call('HGET', meta, 'state') ~= 'running' then return ended() end
redis.call('HSET', meta, 'stop', ARGV[2], 'state', 'stopped', 'ended', now_ms())
redis.call('PUBLISH', channel, 'stop ' .. ARGV[2])
return {'ok', ARGV[2]}
)lua";

// expire(epoch): a stop's second call: the ended job's keys expire `keep` ms from now,
// unless they already do. An epoch of '' as in stop.
// -> {'ok'} | {'lost'}
inline constexpr const char* expire = R"lua(
if lost_by_name() then return {'lost'} end
expire_ended()
return {'ok'}
)lua";

// seen(epoch, host): records `host` as seen (its agent brought the job's stop to the
// host's chunks: the acknowledgement a stop waits for, see KEYS[9]); makes the keys of the
// job, ended, expire if its stop's second call did not come.
// -> {'ok'} | {'lost'}
inline constexpr const char* seen = R"lua(
if lost() then return {'lost'} end
if redis.call('EXISTS', hosts) == 1 then redis.call('HSET', hosts, ARGV[2], now_ms()) end
expire_ended()
return {'ok'}
)lua";

// forget(epoch, older_ms): deletes the job's eleven keys if it ended at least older_ms
// ago, or is abandoned: running, no lease deadline after now, and no host seen within
// max(its lease, older_ms) (procshare-ctl cluster clean checks again here, inside the
// engine, what it read before).
// -> {'deleted', state} | {'kept', why} | {'lost'} (another job now, or gone)
inline constexpr const char* forget = R"lua(
if lost() then return {'lost'} end
local m = redis.call('HMGET', meta, 'state', 'ended', 'lease')
local now, older = now_ms(), tonumber(ARGV[2])
if m[1] ~= 'running' then
  if now - tonumber(m[2] or '0') < older then return {'kept', 'it ended too recently'} end
else
  local last = redis.call('ZREVRANGE', leases, 0, 0, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > now then return {'kept', 'a lease is alive again'} end
  local quiet = math.max(tonumber(m[3] or '10000'), older)  -- (ClusterOptions::lease's default)
  for _, seen in ipairs(redis.call('HVALS', hosts)) do
    if tonumber(seen) + quiet > now then return {'kept', 'a host was seen again'} end
  end
end
redis.call('DEL', unpack(KEYS))
return {'deleted', m[1]}
)lua";

// status(epoch): the job's counters, and the partial progress of the chunks being run.
// -> {'ok', state, stop, best, done, failed, skipped, partial, redelivered, fenced} | {'lost'}
inline constexpr const char* status = R"lua(
if lost() then return {'lost'} end
local m = redis.call('HMGET', meta, 'state', 'stop', 'best', 'done_items', 'failed_items',
  'skipped_items', 'redelivered', 'fenced')
local p = 0
for _, v in ipairs(redis.call('HVALS', partial)) do p = p + tonumber(v) end
return {'ok', m[1], m[2], m[3], m[4], m[5], m[6], int(p), m[7], m[8]}
)lua";

}  // namespace procshare::detail::scripts

namespace procshare::detail {

// A job's keys, in the order every script takes them.
inline std::vector<std::string> job_keys(std::string_view job) {
  std::vector<std::string> keys;
  for (const char* key :
       {"meta", "leases", "owner", "partial", "done", "doneby", "fail", "res", "hosts", "chunks", "claims"})
    keys.push_back("psj:{" + std::string(job) + "}:" + key);
  return keys;
}

// Script `body` with the prelude, made once for the process (and never changed after:
// read without a lock; Engine::eval caches its SHA by the text's address). Found by the
// body's address, or by its text when the literal has another address in this
// translation unit (sanitizer builds do not merge literals).
inline const std::string& script(const char* body) {
  static const char* const bodies[] = {scripts::join,   scripts::claim, scripts::heartbeat,
                                       scripts::complete, scripts::stop,  scripts::expire,
                                       scripts::seen,   scripts::forget, scripts::status};
  constexpr std::size_t count = std::size(bodies);
  static const std::array<std::string, count> made = [] {
    std::array<std::string, count> m;
    for (std::size_t i = 0; i < count; ++i) m[i] = std::string(scripts::prelude) + bodies[i];
    return m;
  }();
  for (std::size_t i = 0; i < count; ++i)
    if (body == bodies[i]) return made[i];
  for (std::size_t i = 0; i < count; ++i)
    if (std::strcmp(body, bodies[i]) == 0) return made[i];
  throw std::logic_error("procshare: not a cluster script");
}

}  // namespace procshare::detail
