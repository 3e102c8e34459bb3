from django.urls import re_path

from conversations.consumers import VisitorConsumer

websocket_urlpatterns = [
    re_path(
        r"^ws/v1/conversations/(?P<conversation_id>[0-9a-fA-F-]{32,36})/$",
        VisitorConsumer.as_asgi(),
    ),
]
