"""Scenario names -> the locust user classes (in locustfile.py) that make up each one.

Kept apart from locustfile.py so the command line can validate names without importing locust.
"""

SCENARIOS = {
    "hello": (["HelloUser"], "GET / (13 bytes): the per-request cost"),
    "api": (["ApiUser"], "JSON API: list, fetch by id, create (40/40/20)"),
    "stream": (["StreamUser"], "GET /stream: 16 x 4 KiB chunked download read to the end"),
    "upload": (
        ["UploadUser"],
        "POST /upload: 1 KiB, 64 KiB, 1 MiB bodies and a chunked 256 KiB one",
    ),
    "longpoll": (
        ["LongPollWaiter", "LongPollSender"],
        "3 of 4 users wait in /poll, 1 of 4 POST /send",
    ),
    "mixed": (
        ["HelloUser", "ApiUser", "StreamUser", "UploadUser", "LongPollWaiter", "LongPollSender"],
        "all of the above at once, users split by class weight",
    ),
}
