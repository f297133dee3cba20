// procshare: Python multiprocessing's shared state (Value, Array, Lock, ...) for C++
// processes, in named shared-memory segments. This umbrella header includes them all.
#pragma once

#include <procshare/array.hpp>
#include <procshare/as_completed.hpp>
#include <procshare/containers.hpp>
#include <procshare/error.hpp>
#include <procshare/flag.hpp>
#include <procshare/format.hpp>
#include <procshare/mutex.hpp>
#include <procshare/pipe.hpp>
#include <procshare/pool.hpp>
#include <procshare/process.hpp>
#include <procshare/queue.hpp>
#include <procshare/range.hpp>
#include <procshare/report.hpp>
#include <procshare/segment.hpp>
#include <procshare/stream.hpp>
#include <procshare/sync.hpp>
#include <procshare/transport.hpp>
#include <procshare/value.hpp>
