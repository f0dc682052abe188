-- wrk script for the echo-4k scenario: POST /echo with a 4 KiB body that the app reads and returns.
wrk.method = "POST"
wrk.body = string.rep("e", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
