-- wrk script for bench/tracking_hits.py: GET paths from a file, one per request, as a browser
-- (its User-Agent). Each thread starts at its own offset and steps by the thread count, so the
-- threads together walk the file once before any path repeats.
-- Settings come from the environment: MTA_BENCH_PATHS (file, one path a line),
-- MTA_BENCH_STATUS (the expected status: 200 for the pixel, 302 for clicks),
-- MTA_BENCH_THREADS (wrk's -t). Prints load_* lines that tracking_hits.py parses.

local threads = {}
local count = 0

function setup(thread)
  thread:set("id", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  other = 0
  paths = {}
  for line in io.lines(os.getenv("MTA_BENCH_PATHS")) do
    table.insert(paths, line)
  end
  expected = tonumber(os.getenv("MTA_BENCH_STATUS"))
  step = tonumber(os.getenv("MTA_BENCH_THREADS"))
  i = id % #paths + 1
  headers = {
    ["Host"] = wrk.host .. ":" .. wrk.port,
    ["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
      .. "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  }
end

function request()
  local path = paths[i]
  i = (i - 1 + step) % #paths + 1
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  if status == expected then
    ok = ok + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local ok_total, other_total = 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format("load_ok: %d\n", ok_total))
  io.write(string.format("load_unexpected_status: %d\n", other_total))
  io.write(string.format("load_socket_errors: %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("load_duration_us: %d\n", summary.duration))
  io.write(string.format("load_latency_p50_us: %d\n", latency:percentile(50)))
  io.write(string.format("load_latency_p99_us: %d\n", latency:percentile(99)))
end
