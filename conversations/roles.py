"""Staff roles: the Agents group and what it may do."""

from __future__ import annotations

AGENTS_GROUP = "Agents"

# Agents see and answer conversations and work tickets; only administrators
# (superusers) edit sites, whose prompts and canaries are secrets.
AGENT_PERMISSIONS = [
    "view_conversation",
    "change_conversation",
    "view_message",
    "view_statuschange",
    "view_ticket",
    "change_ticket",
    "view_internalnote",
    "add_internalnote",
]


def ensure_agents_group():
    """The Agents group with its permissions (migration 0004 creates it too; this
    restores it where a test database was flushed, and is safe to call twice)."""
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.get_or_create(name=AGENTS_GROUP)
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="conversations", codename__in=AGENT_PERMISSIONS
        )
    )
    return group
