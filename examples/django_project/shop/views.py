import os

from django.http import HttpResponse, JsonResponse

from heartworker import long_section

from model import call_upstream_that_hangs, predict
from .wsgi import model


def predict_view(request):
    with long_section("predict", cap=60):
        score = predict(model, float(request.GET.get("s", 5)))
    return JsonResponse({"score": score, "pid": os.getpid()})


def quick(request):
    return JsonResponse({"ok": True, "pid": os.getpid()})


def hang(request):
    call_upstream_that_hangs()            # outside every section: ended at --timeout
    return HttpResponse("never")
