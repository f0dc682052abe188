"""Views of the example Django project: the same endpoints as flask_app.py and bottle_app.py.

  GET  /                  an HTML page
  GET  /text              plain text
  POST /form              form fields (urlencoded or multipart) echoed back as JSON
  POST /json              a JSON document echoed back with the sum of its "numbers"
  POST /upload            a multipart file upload ("file" field): its name, size and sha256
  GET  /stream?n=5&delay=0.2&tag=x
                          a streamed response: n lines "chunk I TIME TAG", one every `delay`
                          seconds, stamped with the time each was produced
  GET  /redirect          302 to /text
  anything else           404

The POST views are csrf_exempt: they are API-style endpoints driven by scripts and tests
(curl, requests) that have no CSRF cookie or token. A browser-facing form in a real project
would keep CSRF protection and render {% csrf_token %} instead.

Limits (examples/limits.py): bodies of at most 64 KiB for /form, 1 MiB for /json and 10 MiB
for /upload (413 beyond, enforced by with_length in wsgi.py before Django reads); /stream
takes n from 0 to 100 and delay from 0 to 1 s (400 with the reason otherwise).
"""

import hashlib
import time

from django.http import (HttpResponse, HttpResponseBadRequest, JsonResponse,
                         StreamingHttpResponse)
from django.shortcuts import redirect
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from examples import limits

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>greenserve + Django</title></head>
<body><h1>Hello from Django on greenserve</h1></body></html>
"""


@require_safe
def index(request):
    return HttpResponse(PAGE)


@require_safe
def text(request):
    return HttpResponse("hello from django\n", content_type="text/plain; charset=utf-8")


@csrf_exempt
@require_POST
def form(request):
    return JsonResponse({"framework": "django", "form": request.POST.dict()})


@csrf_exempt
@require_POST
def json_echo(request):
    # with_length has capped the body at limits.MAX_JSON_BODY.
    try:
        data, total = limits.json_numbers(request.body)
    except limits.BadInput as exc:
        return bad_request(exc)
    return JsonResponse({"framework": "django", "echo": data, "sum": total})


@csrf_exempt
@require_POST
def upload(request):
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return bad_request('send the file in a multipart field named "file"')
    digest = hashlib.sha256()
    for block in uploaded.chunks():  # Django spools big uploads to disk; read in pieces
        digest.update(block)
    return JsonResponse({"framework": "django", "filename": uploaded.name,
                         "size": uploaded.size, "sha256": digest.hexdigest(),
                         "fields": request.POST.dict()})


@require_safe
def stream(request):
    try:
        count, delay, tag = limits.stream_params(request.GET.get)
    except limits.BadInput as exc:
        return bad_request(exc)

    def lines():
        for i in range(count):
            if i:
                time.sleep(delay)  # gevent's sleep under greenserve: others keep being served
            yield f"chunk {i} {time.time():.6f} {tag}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8")


@require_safe
def to_text(request):
    return redirect("/text")


def bad_request(reason):
    return HttpResponseBadRequest(f"{reason}\n", content_type="text/plain; charset=utf-8")
