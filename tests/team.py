"""A real embedded Hearth server with a team on it, for the end-to-end access tests (tests/integration and
tests/browser): the admin (its superuser), Alice in the research group, Bob in the support group, Olga in none;
open-tiny for everyone, research-tiny for the research group (closed by `close_research_model`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests import servers

PASSWORD = "team-pass-4821"


@dataclass
class Team:
    server: servers.HearthServer
    keys: dict[str, str] = field(default_factory=dict)


def start_team_server(data_dir: Path, tiny_gguf: Path) -> Team:
    server = servers.start_embedded(data_dir, {"open-tiny": tiny_gguf, "research-tiny": tiny_gguf})
    team = Team(server)
    for name in ("alice", "bob", "olga"):
        team.keys[name] = server.create_user(name, PASSWORD)
    team.keys["admin"] = server.api_key
    server.manage("shell", "-c", (
        "from django.contrib.auth.models import Group, User; "
        "Group.objects.create(name='research').user_set.add(User.objects.get(username='alice')); "
        "Group.objects.create(name='support').user_set.add(User.objects.get(username='bob'))"))
    return team


def close_research_model(team: Team) -> None:
    """research-tiny for the research group only (as an admin sets it on the model's page)."""
    team.server.manage("shell", "-c", (
        "from django.contrib.auth.models import Group; from inference.models import LocalModel; "
        "m = LocalModel.objects.get(name='research-tiny'); m.open_to_everyone = False; m.save(); "
        "m.allowed_groups.set([Group.objects.get(name='research')])"))
