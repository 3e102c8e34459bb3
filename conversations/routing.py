from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import re_path

from conversations.agent_consumer import AgentConsumer
from conversations.consumers import VisitorConsumer


class NoSuchSocket(AsyncWebsocketConsumer):
    """Refuses the handshake (HTTP 403) on a path with no websocket endpoint.

    Without it Channels' router raises for an unknown path: the client gets a 500
    and the server logs a traceback, for any stray or hostile request.
    """

    async def connect(self) -> None:
        await self.close()


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
    # Last: everything the routes above do not match.
    re_path(r"", NoSuchSocket.as_asgi()),
]
