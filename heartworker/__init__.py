"""heartworker: Gunicorn workers for apps whose startup or some requests take minutes.

    gunicorn -k heartworker.SyncWorker --timeout 30 app:app
    gunicorn -k heartworker.GeventWorker --timeout 30 app:app
    gunicorn -k heartworker.ThreadWorker --threads 8 --timeout 30 app:app
    gunicorn -k heartworker.UvicornWorker --timeout 30 app:asgi_app

    from heartworker import long_section
    with long_section("load model", cap=3600):
        model = load_model()

The worker classes are imported lazily, so ``import heartworker`` in an
application costs nothing and needs neither Gunicorn's workers nor gevent.
"""

from . import replaced
from .section import LongSection, SectionCapExceeded, long_section, progress
from .settings import SettingError

replaced.check()     # -k heartworker.SyncWorker with --threads > 1: never silently

__version__ = "0.5.0"
__all__ = ["long_section", "LongSection", "progress", "SectionCapExceeded", "SettingError",
           "SyncWorker", "ThreadWorker", "GeventWorker", "UvicornWorker", "UvicornH11Worker"]


def __getattr__(name):
    if name == "SyncWorker":
        from .sync import SyncWorker
        return SyncWorker
    if name == "ThreadWorker":
        from .gthread import ThreadWorker
        return ThreadWorker
    if name == "GeventWorker":
        try:
            import gevent  # noqa: F401  (only to tell what is missing)
        except ImportError as exc:
            raise ImportError("heartworker.GeventWorker needs gevent: "
                              "pip install 'heartworker[gevent]'") from exc
        from .ggevent import GeventWorker
        return GeventWorker
    if name in ("UvicornWorker", "UvicornH11Worker"):
        try:
            import uvicorn_worker  # noqa: F401  (only to tell what is missing)
        except ImportError as exc:
            raise ImportError(f"heartworker.{name} needs uvicorn-worker: "
                              "pip install 'heartworker[asgi]'") from exc
        from . import uvicorn
        return getattr(uvicorn, name)
    raise AttributeError(f"module 'heartworker' has no attribute {name!r}")
