from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import re_path

from conversations.agent_consumer import AgentConsumer
from conversations.consumers import VisitorConsumer

websocket_urlpatterns = [
    re_path(
        r"^ws/v1/conversations/(?P<conversation_id>[0-9a-fA-F-]{32,36})/$",
        VisitorConsumer.as_asgi(),
    ),
    # Staff only: the session cookie says who, and only the product's own pages
    # (ALLOWED_HOSTS) may open it, so another site cannot ride an agent's cookie.
    re_path(
        r"^ws/v1/agent/$",
        AllowedHostsOriginValidator(AuthMiddlewareStack(AgentConsumer.as_asgi())),
    ),
]
