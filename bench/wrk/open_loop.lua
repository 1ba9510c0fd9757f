-- Open-loop, constant-rate load for wrk 4.1 (Debian's build, LuaJIT), driven by
-- bench/http_load.py. Usage:
--   AJS_WRK_RATE=1000 AJS_WRK_JOBS=1 AJS_WRK_KEY=ajs_... AJS_WRK_OUT=/tmp/x.txt \
--     wrk -t1 -c64 -d25s --timeout 30s -s bench/wrk/open_loop.lua http://127.0.0.1:PORT
-- RATE: requests per second (over all AJS_WRK_THREADS threads, as wrk's -t); JOBS: 1 for
-- POST /api/v1/jobs, else the number of jobs in each POST /api/v1/jobs/batch; OUT: file
-- for the samples (written by done()); KEY: the API key. (Environment, not script
-- arguments: wrk hands arguments only to the threads' init(), not to done().)
--
-- Why a script: wrk is closed-loop (a connection sends its next request when the answer
-- to the last arrives), so a slow server is sent less and its queueing never shows
-- ("coordinated omission"). Here every thread keeps a fixed schedule of send slots;
-- delay() hands an idle connection the next slot and waits until it is due. When every
-- connection is busy the slot is sent late, and its latency still counts from the slot:
-- the schedule time travels in the job's payload (t_enq, microseconds of CLOCK_MONOTONIC)
-- and comes back in the answer, so response() knows which slot it answers whatever the
-- order the connections finish in. wrk's own latency figures count from the actual send
-- and are ignored.
--
-- wrk 4.1 gives Lua no clock finer than os.time()'s seconds; LuaJIT's FFI reads
-- clock_gettime(CLOCK_MONOTONIC) directly.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } ajs_timespec;
int clock_gettime(int clk_id, ajs_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("ajs_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

-- main state: the threads, to collect their samples in done() -----------------------------

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- each thread's state ---------------------------------------------------------------------

local interval_us, jobs, key
local start_us = nil
local slots_taken = 0
local due = {}          -- claimed slots not sent yet, oldest first: due[head..tail]
local due_head, due_tail = 1, 0
local path, headers

samples_at = {}         -- slot time - start (us), of each answered request
samples_lat = {}        -- answer time - slot time (us)
bad = {}                -- status -> count, for answers that are not 201
unmatched = 0           -- 201 answers without a slot time in the body (should be 0)
started_at = 0          -- this thread's schedule start (us, CLOCK_MONOTONIC)
slots = 0               -- slots handed out

function init(args)
  local rate = tonumber(os.getenv("AJS_WRK_RATE"))
  jobs = tonumber(os.getenv("AJS_WRK_JOBS") or "1")
  key = os.getenv("AJS_WRK_KEY") or ""
  local nthreads = tonumber(os.getenv("AJS_WRK_THREADS") or "1")
  interval_us = 1000000 * nthreads / rate
  path = jobs == 1 and "/api/v1/jobs" or "/api/v1/jobs/batch"
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
  }
end

function delay()
  local now = now_us()
  if start_us == nil then
    start_us = now
    started_at = now
  end
  local slot = start_us + slots_taken * interval_us
  slots_taken = slots_taken + 1
  slots = slots_taken
  due_tail = due_tail + 1  -- (not #due: with the sent ones set to nil, # is not the end)
  due[due_tail] = slot
  local wait_ms = math.ceil((slot - now) / 1000)  -- late rather than early: ms timers
  if wait_ms < 0 then wait_ms = 0 end
  return wait_ms
end

local function one(slot)
  return '{"job_type":"bench_noop","payload":{"t_enq":' .. string.format("%d", slot) .. '}}'
end

function request()
  local slot
  if due_head > due_tail then  -- no delay() before this one (wrk's first probe): now
    slot = now_us()
  else
    slot = due[due_head]
    due[due_head] = nil
    due_head = due_head + 1
  end
  local body
  if jobs == 1 then
    body = one(slot)
  else
    local job = one(slot)
    local parts = {}
    for i = 1, jobs do parts[i] = job end
    body = '{"jobs":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  local now = now_us()
  if status ~= 201 then
    bad[status] = (bad[status] or 0) + 1
    return
  end
  local slot = body:match('"t_enq":(%d+)')
  if slot == nil then
    unmatched = unmatched + 1
    return
  end
  slot = tonumber(slot)
  local n = #samples_at + 1
  samples_at[n] = slot - start_us
  samples_lat[n] = now - slot
end

-- main state again ------------------------------------------------------------------------

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("AJS_WRK_OUT") or "/dev/stdout", "w"))
  out:write(string.format("summary requests=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
  for i, thread in ipairs(threads) do
    out:write(string.format("thread %d slots=%d unmatched=%d\n", i, thread:get("slots"),
      thread:get("unmatched")))
    for status, count in pairs(thread:get("bad")) do
      out:write(string.format("bad %d %d\n", status, count))
    end
    local at, lat = thread:get("samples_at"), thread:get("samples_lat")
    for j = 1, #at do
      out:write(string.format("%d %d\n", at[j], lat[j]))
    end
  end
  out:close()
end
