-- wrk script for a cross-check of the harness (see BENCHMARKS.md):
--   wrk -t1 -c16 -d5s -s bench/rotate.lua http://ADDR -- DIR/SERVER.cookies /read
-- Each request sends the next of the server's session cookies.
local cookies, path, i = {}, "/read", 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then cookies[#cookies + 1] = line end
  end
  path = args[2] or path
end

function request()
  i = i % #cookies + 1
  return wrk.format("GET", path, { ["Cookie"] = cookies[i] })
end
