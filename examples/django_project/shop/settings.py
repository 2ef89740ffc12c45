"""A minimal Django project under heartworker (see wsgi.py for how to run it)."""

SECRET_KEY = "heartworker-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
