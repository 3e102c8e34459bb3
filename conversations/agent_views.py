"""The live agent console page (its data flows over the staff websocket)."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from conversations.agent_consumer import may_answer, may_use_console


@require_GET
def agent_console(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url="/admin/login/")
    if not may_use_console(request.user):
        return HttpResponse("The agent console is for support staff.", status=403)
    user = request.user
    return render(
        request,
        "agent/console.html",
        {
            "agent_name": user.get_full_name() or user.get_username(),
            "agent_id": user.pk,
            "can_answer": may_answer(user),
        },
    )
