"""ASGI entry point: Django for HTTP, Channels for the visitor websocket."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportbot.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from conversations.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origins are checked per site by the consumer, not against ALLOWED_HOSTS:
        # the widget is embedded on customers' sites.
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
