-- wrk script: POST /orders with JSON, an Idempotency-Key per request as the mode says.
--   wrk ... -s bench/orders.lua -- MODE PREFIX POOL
--   fresh:  a new key every request (PREFIX .. thread .. "-" .. n)
--   cycle:  keys PREFIX0 .. PREFIX(POOL-1) in turn (all completed beforehand: replays)
--   random: a random key of PREFIX1 .. PREFIXPOOL (a bulk-loaded table: replays)
--   padded: a random key of PREFIX .. %035d of 1 .. POOL (the growth scenario's loaded keys)
--   none:   no key at all
-- done() prints one line "JSON:{...}": counts, latency percentiles (us) and status codes.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  mode = args[1] or "none"
  prefix = args[2] or "k"
  pool = tonumber(args[3] or "1")
  counter = 0
  statuses = {}
  body = '{"sku":"ATTA-5KG","qty":2}'
  base = { ["Content-Type"] = "application/json", ["Host"] = "127.0.0.1" }
  math.randomseed(os.time() * 100 + id)
end

function request()
  counter = counter + 1
  local key
  if mode == "fresh" then
    key = prefix .. id .. "-" .. counter
  elseif mode == "cycle" then
    key = prefix .. ((counter * 7 + id) % pool)
  elseif mode == "random" then
    key = prefix .. math.random(1, pool)
  elseif mode == "padded" then
    key = prefix .. string.format("%035d", math.random(1, pool))
  end
  local headers = { ["Content-Type"] = base["Content-Type"], ["Host"] = base["Host"] }
  if key then
    headers["Idempotency-Key"] = key
  end
  return wrk.format("POST", "/orders", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("statuses")
    for status, n in pairs(seen or {}) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'JSON:{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,' ..
    '"p99":%d,"p999":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), table.concat(parts, ",")))
end
