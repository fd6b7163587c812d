-- wrk script: POST /v1/messages with the trial API key, one recipient, one
-- GSM segment per request (see bench/README.md, section "HTTP").
--
--   wrk -t2 -c64 -d10s --latency -s bench/http/submit.lua http://127.0.0.1:8080
--
-- API_KEY overrides the key (default: the embedded trial account's `trial`).
-- Every non-201 answer is counted and printed at the end: wrk itself only
-- reports socket errors and non-2xx/3xx statuses in one number.

local key = os.getenv("API_KEY") or "trial"

wrk.method = "POST"
wrk.path = "/v1/messages"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"from":"TERN","to":"447900000001","text":"Hello from wrk"}'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  refused = 0
end

function response(status, headers, body)
  if status ~= 201 then
    refused = refused + 1
    if refused == 1 then
      io.stderr:write("first refusal: " .. status .. " " .. body .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("refused") or 0)
  end
  io.write(string.format("non-201 answers: %d of %d\n", total, summary.requests))
end
