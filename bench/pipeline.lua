-- wrk script: sends DEPTH requests per write (HTTP/1.1 pipelining), as
-- TechEmpower's pipeline.lua does. Usage: wrk ... -s pipeline.lua -- / 16
init = function(args)
  local path = args[1] or "/"
  local depth = tonumber(args[2]) or 16
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format(nil, path)
  end
  req = table.concat(r)
end

request = function()
  return req
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
