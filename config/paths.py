"""The server's file paths are for admins: everyone else sees a path in a message as `…/<its last part>`.

Pages pass their texts through the `paths_for` template filter (webui.templatetags.paths), the chat socket its
error messages (webui.consumers), and the API every error message (api.errors): an API client learns the file's
name, an admin the whole path on the jobs page and in the server log.
"""

from __future__ import annotations

import re

# An absolute path of two or more parts; the URL paths of Hearth's own API (/v1/..., /api/...) are not file paths.
_SEGMENT = r"[^\s/'\"`<>()\[\]{},;:]"
ABSOLUTE_PATH = re.compile(rf"(?<![\w.~:/-])/(?!v1/|api/)(?:{_SEGMENT}+/)+({_SEGMENT}+)")


def hide_paths(text: str) -> str:
    return ABSOLUTE_PATH.sub(r"…/\1", text) if isinstance(text, str) else text


def paths_for(text: str, user) -> str:
    """`text` as `user` may see it: whole for admins (is_staff), paths shortened for everyone else."""
    return text if getattr(user, "is_staff", False) else hide_paths(text)
