-- wrk script for the benchmark: POST a JSON body read from $BENCH_BODY_FILE.
-- With $BENCH_FAIL_EVERY = n > 0, every n-th request carries a fresh `x-bench-fail` token
-- (the fake upstream answers 503 the first time it sees a token, 200 the second time).
-- done() prints one line "BENCHJSON {...}" with the figures bench/main.py reads.

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- $BENCH_HEADERS: more headers, one "name:value" a line (a peer gateway's routing headers).
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
   local name, value = string.match(line, "^([^:]+):(.*)$")
   if name then wrk.headers[name] = value end
end

-- Unset: wrk sends one pre-built request (fastest).  Set, even to 0, request() builds each
-- request in Lua, so the retry row's clean baseline pays the same load-generator cost.
local fail_every = tonumber(os.getenv("BENCH_FAIL_EVERY") or "-1")
local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

if fail_every >= 0 then
   function request()
      counter = counter + 1
      if fail_every > 0 and counter % fail_every == 0 then
         local headers = {}
         for k, v in pairs(wrk.headers) do headers[k] = v end
         headers["x-bench-fail"] = tostring(tid) .. "-" .. tostring(counter)
         return wrk.format(nil, nil, headers, nil)
      end
      return wrk.format(nil, nil, nil, nil)
   end
end

-- $BENCH_DELAY_MS: each connection waits this long before its next request (an offered
-- load below what the proxy can take: two proxies loaded at once get the same rate).
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms then
   function delay()
      return delay_ms
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
      '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
