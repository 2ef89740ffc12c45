"""A one-file Django app for the tests (Django's handlers catch Exception, as Flask's do)."""

import os
import time

from django.conf import settings

settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
                   SECRET_KEY="heartworker-tests", MIDDLEWARE=[])

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from heartworker import long_section  # noqa: E402


def pid(request):
    return HttpResponse(str(os.getpid()))


def long(request):
    with long_section("django long", cap=30):
        time.sleep(float(request.GET.get("s", 3)))
    return HttpResponse("done")


def export(request):
    with long_section("django export", cap=float(request.GET.get("cap", 2))):
        while True:
            time.sleep(3600)


urlpatterns = [path("pid", pid), path("long", long), path("export", export)]
app = get_wsgi_application()
