"""Who may use which model: the one place every page, socket and API dialect asks.

A model is open to everyone (the default), or only to the members of its `allowed_groups`; admins (is_staff) may
use every model. A model a user may not use does not exist for them: it is absent from every list, and looking it
up by name finds nothing, exactly as for a name the library does not have (one query either way, so that neither the
answer nor its path tells the two apart). The writes of the admin pages (groups, their members, a model's access)
live here too, each recorded in the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from inference.audit import audit_record
from inference.models import LocalModel

GROUP_NAME_MAX = Group._meta.get_field("name").max_length


# ---------------------------------------------------------------------------------------------------------
# Reads


def models_usable_by(user) -> QuerySet[LocalModel]:
    """The models `user` may use: all of them for an admin; else the open ones and those of the user's groups.
    Nobody (anonymous, deactivated) may use any."""
    models = LocalModel.objects.all()
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return models.none()
    if user.is_staff:
        return models
    # An EXISTS, not a join: no duplicate rows, and annotations (counts of jobs) stay right.
    granted = LocalModel.allowed_groups.through.objects.filter(localmodel_id=OuterRef("pk"), group__user=user)
    return models.filter(Q(open_to_everyone=True) | Exists(granted))


def model_for(user, name: str) -> LocalModel | None:
    """The model called `name` if `user` may use it; None for a name unknown or forbidden alike."""
    if not name:
        return None
    return models_usable_by(user).filter(name=name).first()


def may_use(user, model: LocalModel) -> bool:
    return models_usable_by(user).filter(pk=model.pk).exists()


# ---------------------------------------------------------------------------------------------------------
# Writes (the admin pages): groups, their members, a model's access. Each one is recorded.


def _group_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError("A group needs a name.")
    if len(name) > GROUP_NAME_MAX:
        raise ValidationError(f"A group's name has at most {GROUP_NAME_MAX} characters.")
    return name


def group_create(actor, name: str) -> Group:
    name = _group_name(name)
    if Group.objects.filter(name__iexact=name).exists():
        raise ValidationError(f"There is already a group called {name}.")
    try:
        with transaction.atomic():
            group = Group.objects.create(name=name)
    except IntegrityError:
        raise ValidationError(f"There is already a group called {name}.") from None
    audit_record(actor, "group.create", group.name)
    return group


def group_rename(actor, group: Group, name: str) -> Group:
    name = _group_name(name)
    if name == group.name:
        return group
    if Group.objects.filter(name__iexact=name).exclude(pk=group.pk).exists():
        raise ValidationError(f"There is already a group called {name}.")
    old = group.name
    group.name = name
    group.save(update_fields=["name"])
    audit_record(actor, "group.rename", group.name, old_name=old)
    return group


@transaction.atomic
def group_delete(actor, group: Group) -> None:
    """Delete a group: its members keep their accounts; models only it could use stay closed (to admins)."""
    name, members = group.name, group.user_set.count()
    models = list(group.models.values_list("name", flat=True))
    group.delete()
    audit_record(actor, "group.delete", name, members=members, models=models)


@transaction.atomic
def group_members_change(actor, group: Group, *, add: Iterable = (), remove: Iterable = ()) -> None:
    """Add and remove members (users); only real changes are recorded, one event per user."""
    current = set(group.user_set.values_list("pk", flat=True))
    for user in add:
        if user.pk not in current:
            group.user_set.add(user)
            audit_record(actor, "group.member_add", group.name, user=user.get_username())
    for user in remove:
        if user.pk in current:
            group.user_set.remove(user)
            audit_record(actor, "group.member_remove", group.name, user=user.get_username())


@transaction.atomic
def user_groups_set(actor, user, groups: Iterable[Group]) -> None:
    """The Users page: `user` is in exactly these groups afterwards."""
    wanted = {group.pk: group for group in groups}
    current = {group.pk: group for group in user.groups.all()}
    for pk in sorted(wanted.keys() - current.keys()):
        group_members_change(actor, wanted[pk], add=[user])
    for pk in sorted(current.keys() - wanted.keys()):
        group_members_change(actor, current[pk], remove=[user])


@transaction.atomic
def model_access_set(actor, model: LocalModel, *, open_to_everyone: bool, groups: Iterable[Group] = ()) -> None:
    """Open `model` to everyone, or only to these groups' members (and admins). Closed to no group, only admins
    may use it."""
    groups = [] if open_to_everyone else list(groups)
    before = (model.open_to_everyone, sorted(model.allowed_groups.values_list("name", flat=True)))
    model.open_to_everyone = open_to_everyone
    model.save(update_fields=["open_to_everyone"])
    model.allowed_groups.set(groups)
    after = (open_to_everyone, sorted(group.name for group in groups))
    if after != before:
        audit_record(actor, "model.access", model.name, open_to_everyone=open_to_everyone, groups=after[1],
                     was_open_to_everyone=before[0], was_groups=before[1])


def users_by_pk(pks: Iterable) -> QuerySet:
    return get_user_model().objects.filter(pk__in=[pk for pk in pks if str(pk).isdigit()])
