-- wrk script for bench/kv.py: one fixed request per connection, reused
-- (HTTP/1.1 keep-alive), and a one-line JSON summary at the end.
--
--   wrk -s bench/kv.lua URL -- METHOD [BODY]
--
-- The body, if any, is sent as application/json (etcd's gateway wants JSON;
-- the Consul API takes the raw bytes whatever the type says).

function init(args)
   wrk.method = args[1] or "GET"
   if args[2] and #args[2] > 0 then
      wrk.body = args[2]
      wrk.headers["Content-Type"] = "application/json"
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"p50_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
      '"err_connect": %d, "err_read": %d, "err_write": %d, ' ..
      '"err_status": %d, "err_timeout": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
