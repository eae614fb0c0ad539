-- wrk script: send pre-built raw HTTP requests from a pool file, in order.
--
-- wrk <opts> -s pool.lua <url> -- <pool prefix> <once|cycle>
--
-- Thread k reads "<prefix>.<k>": raw requests separated by NUL bytes, all built (and, for Tether,
-- DPoP-signed) before the run. "once": each request is sent at most once (a DPoP proof is
-- single-use); when a thread runs out it counts the shortfall and stops. "cycle": the pool repeats
-- (OpenBao requests carry a token, no per-request proof). Per request the script only indexes a
-- table, so wrk's own CPU stays a small fraction of the server's.
-- Each thread writes "ready <k> <n>" to stderr once its pool is loaded; done() prints one line
-- "BENCHJSON {...}" with the figures the harness reads.
--
-- Paced runs: with TETHER_BENCH_THINK_MS=T in the environment, each connection waits a random
-- 0.5 T to 1.5 T ms after an answer before it sends its next request (an agent thinking between
-- tool calls). wrk starts a request's latency when it is written, so the pause is not counted.
-- wrk also pauses each connection before its first request. delay() is defined or not when the
-- script loads, from the environment: closed-loop runs have no delay() at all (wrk then schedules
-- no timer per request).

local think_ms = tonumber(os.getenv("TETHER_BENCH_THINK_MS") or "0") or 0
if think_ms > 0 then
  function delay()
    return math.floor(think_ms * (0.5 + math.random()) + 0.5)
  end
end

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1] .. "." .. id, "rb"))
  local data = f:read("*a")
  f:close()
  once = args[2] == "once"
  pool = {}
  n = 0
  local pos = 1
  while true do
    local s = string.find(data, "\0", pos, true)
    if not s then break end
    n = n + 1
    pool[n] = string.sub(data, pos, s - 1)
    pos = s + 1
  end
  used = 0
  short = 0
  math.randomseed(os.time() * 64 + id)
  io.stderr:write("ready " .. id .. " " .. n .. "\n")
  io.stderr:flush()
end

function request()
  if used >= n then
    if once then
      -- Out of proofs: never resend one. Stop this thread; the request returned meanwhile is the
      -- last one again and is answered 401 (counted in "short", subtracted from the errors).
      short = short + 1
      if short == 1 then wrk.thread:stop() end
      return pool[n]
    end
    used = 0
  end
  used = used + 1
  return pool[used]
end

function done(summary, latency, requests)
  local consumed, shortfall = 0, 0
  for _, t in ipairs(threads) do
    consumed = consumed + (t:get("used") or 0)
    shortfall = shortfall + (t:get("short") or 0)
  end
  local e = summary.errors
  io.stdout:write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,'
      .. '"mean":%.1f,"max":%d},"consumed":%d,"short":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, consumed, shortfall))
end
