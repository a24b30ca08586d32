"""The API keys page: a user's own keys with their limits and usage; create (shown once) and revoke."""

from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from api import services
from api.models import ApiKey
from api.selectors import keys_with_usage

NAME_MAX_LENGTH = ApiKey._meta.get_field("name").max_length


@never_cache  # the page shows a new key once: no browser or proxy may keep a copy (Cache-Control: no-store)
@login_required
def keys(request):
    new_key = request.session.pop("api_web_new_key", None)
    return render(request, "api/keys.html", {"keys": keys_with_usage(owner=request.user), "new_key": new_key,
                                             "name_max_length": NAME_MAX_LENGTH})


@login_required
@require_POST
def key_create(request):
    name = request.POST.get("name", "").strip()
    if len(name) > NAME_MAX_LENGTH:
        flash.error(request, f"A key's name has at most {NAME_MAX_LENGTH} characters.")
        return redirect("api_web:keys")
    _key, text = services.key_create(request.user, request.user, name=name)
    # Shown on the next page view, once: the session forgets it there. Only its hash is stored.
    request.session["api_web_new_key"] = text
    return redirect("api_web:keys")


@login_required
@require_POST
def key_revoke(request, key_id: int):
    key = ApiKey.objects.filter(owner=request.user, pk=key_id).first()
    if key is None:
        raise Http404("No such API key.")
    services.key_revoke(request.user, key)
    flash.success(request, f"The key {key.display} is revoked; requests with it now get 401.")
    return redirect("api_web:keys")
