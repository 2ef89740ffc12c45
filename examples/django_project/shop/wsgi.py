"""The Django project's WSGI entry point.  From the repository's root:

    .venv/bin/heartworker --chdir examples/django_project --pythonpath .. \\
        --timeout 2 --startup-stall 5 -k heartworker.ThreadWorker --threads 4 \\
        shop.wsgi:application

(`bash tests/run.sh` creates .venv with Django.)  Then:

    curl localhost:8000/predict?s=5   # 200 after 5 s: declared long work, --timeout 2
    curl localhost:8000/quick         # 200 at once
    curl localhost:8000/hang          # the request is ended after 2 s
"""

import os

from django.core.wsgi import get_wsgi_application

from model import load_model

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

application = get_wsgi_application()
model = load_model()          # at import: inside the worker's startup section
