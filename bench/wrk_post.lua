-- wrk script for bench/http_accept.py: POST one small urlencoded message per request.
-- Settings come from the environment (visible in every wrk Lua state):
--   MTA_BENCH_PATH  request path, MTA_BENCH_AUTH  Authorization header value,
--   MTA_BENCH_BODY  urlencoded body, MTA_BENCH_IDS  file the 200-answered Message-Ids go to.
-- Prints load_* lines that http_accept.py parses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  other = 0
  bad_body = 0
  ids = {}
  local headers = {
    ["Host"] = wrk.host .. ":" .. wrk.port,
    ["Authorization"] = os.getenv("MTA_BENCH_AUTH"),
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }
  req = wrk.format("POST", os.getenv("MTA_BENCH_PATH"), headers, os.getenv("MTA_BENCH_BODY"))
end

function request()
  return req
end

function response(status, headers, body)
  if status == 200 then
    local id = string.match(body, '"id":"<([^>]+)>"')
    if id then
      ok = ok + 1
      ids[ok] = id
    else
      bad_body = bad_body + 1
    end
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("MTA_BENCH_IDS"), "w")
  local ok_total, other_total, bad_total = 0, 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
    bad_total = bad_total + thread:get("bad_body")
    for _, id in ipairs(thread:get("ids")) do
      out:write(id, "\n")
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format("load_ok: %d\n", ok_total))
  io.write(string.format("load_non_200: %d\n", other_total))
  io.write(string.format("load_bad_body: %d\n", bad_total))
  io.write(string.format("load_socket_errors: %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("load_duration_us: %d\n", summary.duration))
  io.write(string.format("load_latency_p50_us: %d\n", latency:percentile(50)))
  io.write(string.format("load_latency_p99_us: %d\n", latency:percentile(99)))
  io.write(string.format("load_latency_max_us: %d\n", latency.max))
end
