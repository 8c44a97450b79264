-- wrk script: many sessions, each sending strictly sequential POST /counter, and a check
-- of every answer: the counter must be exactly the session's previous value plus one.
--
-- wrk does not say which connection a response belongs to, so sessions are not tied to
-- connections: request() takes an idle session (one whose last request was answered),
-- response() finds the session again by the "session" field of the JSON body, checks
-- the counter, keeps the cookies and makes the session idle again. With no pipelining a
-- connection has one request in flight, so there are as many sessions as connections,
-- each like one browser tab clicking as fast as it can.
--
-- Arguments (after `--`): `nover` = do not send the version cookie (plain async: what a
-- cluster without read-your-writes gives); `put=<bytes>` = seed mode: PUT /attrs/data
-- with a value of that size in a new session each time; `stop=<n>` = each thread stops
-- after n answers.

local idle, sessions = {}, {}
checked, stale, errors, created = 0, 0, 0, 0 -- globals: done() reads them per thread
local send_version, put_body, stop_after = true, nil, nil

function init(args)
  for _, a in ipairs(args) do
    if a == "nover" then send_version = false end
    local n = a:match("^put=(%d+)$")
    if n then put_body = '"' .. string.rep("x", tonumber(n) - 2) .. '"' end
    local s = a:match("^stop=(%d+)$")
    if s then stop_after = tonumber(s) end
  end
end

function request()
  if put_body then
    return wrk.format("PUT", "/attrs/data", { ["Content-Type"] = "application/json" }, put_body)
  end
  local s = table.remove(idle)
  local headers = {}
  if s then
    if send_version and s.ver then
      headers["Cookie"] = "SESSIONID=" .. s.sid .. "; SESSIONID_V=" .. s.ver
    else
      headers["Cookie"] = "SESSIONID=" .. s.sid
    end
  end
  return wrk.format("POST", "/counter", headers, "")
end

function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    return
  end
  if stop_after and checked + created + 1 >= stop_after then
    wrk.thread:stop()
  end
  if put_body then
    created = created + 1
    return
  end
  local sid = body:match('"session":"([^"]+)"')
  local n = tonumber(body:match('"counter":(%-?%d+)'))
  if not sid or not n then return end -- the static ceiling answers no session
  local s = sessions[sid]
  if not s then
    s = { sid = sid, last = 0 }
    sessions[sid] = s
    created = created + 1
  end
  checked = checked + 1
  if n ~= s.last + 1 then stale = stale + 1 end
  s.last = n
  for k, v in pairs(headers) do
    if k:lower() == "set-cookie" then
      local ver = v:match("^SESSIONID_V=([^;]+)")
      if ver then s.ver = ver end
    end
  end
  table.insert(idle, s)
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local c, st, e, cr = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("checked"); st = st + t:get("stale")
    e = e + t:get("errors"); cr = cr + t:get("created")
  end
  local errs = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "checked=%d out_of_sequence=%d sessions=%d http_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    c, st, cr, e, errs.connect + errs.read + errs.write + errs.timeout))
end
