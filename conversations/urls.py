from django.urls import path

from conversations import health, views

urlpatterns = [
    path("api/v1/conversations", views.conversation_create, name="conversation-create"),
    path(
        "api/v1/conversations/<uuid:conversation_id>/messages",
        views.message_list,
        name="message-list",
    ),
    path("healthz", health.healthz, name="healthz"),
    path("", views.demo_page, name="demo"),
]
