from django.urls import path

from conversations import agent_views, health, views

urlpatterns = [
    path("api/v1/conversations", views.conversation_create, name="conversation-create"),
    path(
        "api/v1/conversations/<uuid:conversation_id>/messages",
        views.message_list,
        name="message-list",
    ),
    path("api/v1/sites/<str:site_key>/widget", views.widget_config, name="widget-config"),
    path("healthz", health.healthz, name="healthz"),
    path("agent/", agent_views.agent_console, name="agent-console"),
    path("", views.demo_page, name="demo"),
]
