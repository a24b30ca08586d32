"""Who single sign-on lets in and as whom (webui/sso.py): the rules on claims, on a real database."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from webui import sso

SSO = {"HEARTH_OIDC_ISSUER": "https://sso.example.com", "HEARTH_OIDC_GROUPS_CLAIM": "groups",
       "HEARTH_OIDC_ADMIN_GROUPS": ["hearth-admins"], "HEARTH_OIDC_ALLOWED_DOMAINS": ["example.com"],
       "HEARTH_OIDC_TRUST_EMAIL": False, "HEARTH_OIDC_PROVIDER_NAME": "Team SSO"}


@pytest.fixture(autouse=True)
def sso_settings(settings):
    for name, value in SSO.items():
        setattr(settings, name, value)
    return settings


@pytest.mark.parametrize(("claim_name", "claims", "groups"), [
    ("groups", {"groups": ["b", "a", "a"]}, ["a", "b"]),
    ("groups", {"groups": "solo"}, ["solo"]),
    ("groups", {}, []),
    ("groups", {"groups": ["ok", 7, {"name": "x"}, "", "y" * 151]}, ["ok"]),
    ("realm_access.roles", {"realm_access": {"roles": ["reader"]}}, ["reader"]),
    ("https://example.com/groups", {"https://example.com/groups": ["ns"]}, ["ns"]),
])
def test_it_reads_group_names_from_the_claim(sso_settings, claim_name, claims, groups):
    sso_settings.HEARTH_OIDC_GROUPS_CLAIM = claim_name
    assert sso.group_names(claims) == groups


@pytest.mark.parametrize(("claims", "trust", "refusal"), [
    ({"email": "ann@example.com", "email_verified": True}, False, None),
    ({"email": "ann@Example.COM", "email_verified": "true"}, False, None),
    ({"email": "ann@example.com"}, True, None),
    ({"email": "ann@example.com"}, False, "did not confirm that ann@example.com is verified"),
    ({"email": "ann@example.com", "email_verified": False}, False, "did not confirm"),
    ({"preferred_username": "ann"}, False, "gave Hearth no email address"),
    ({"email": "ann@evil.example.com", "email_verified": True}, False, "open to accounts of example.com only"),
])
def test_it_lets_in_verified_emails_of_allowed_domains_only(sso_settings, claims, trust, refusal):
    sso_settings.HEARTH_OIDC_TRUST_EMAIL = trust
    if refusal is None:
        assert sso.check_claims(claims) == claims["email"]
    else:
        with pytest.raises(sso.SignInRefused, match=refusal):
            sso.check_claims(claims)


@pytest.mark.django_db
def test_it_names_new_users_after_preferred_username_without_taking_a_name_in_use():
    get_user_model().objects.create_user("ann")
    assert sso.username_for({"preferred_username": "Ann"}, "ann@example.com") == "Ann-2"
    assert sso.username_for({"preferred_username": "ann smith/x"}, "a@example.com") == "ann-smith-x"
    assert sso.username_for({}, "bo@example.com") == "bo@example.com"


@pytest.mark.django_db
def test_it_makes_groups_and_admin_follow_the_claim_but_never_demotes_a_superuser():
    users = get_user_model().objects
    Group.objects.create(name="given-in-hearth")
    member = users.create_user("member")
    member.groups.add(Group.objects.get(name="given-in-hearth"))
    root = users.create_superuser("root", password="x" * 12)

    sso.follow_claims(member, {"groups": ["hearth-admins", "new-team"]})
    sso.follow_claims(root, {"groups": ["new-team"]})

    assert sorted(member.groups.values_list("name", flat=True)) == ["hearth-admins", "new-team"]
    assert users.get(pk=member.pk).is_staff is True
    assert users.get(pk=root.pk).is_staff is True
    sso.follow_claims(member, {})
    assert list(member.groups.all()) == [] and users.get(pk=member.pk).is_staff is False


@pytest.mark.django_db
def test_it_leaves_groups_and_admins_to_hearth_without_a_groups_claim(sso_settings):
    sso_settings.HEARTH_OIDC_GROUPS_CLAIM = ""
    sso_settings.HEARTH_OIDC_ADMIN_GROUPS = []
    user = get_user_model().objects.create_user("kept", is_staff=True)
    user.groups.add(Group.objects.create(name="given-in-hearth"))

    sso.follow_claims(user, {"groups": ["ignored"]})

    assert list(user.groups.values_list("name", flat=True)) == ["given-in-hearth"]
    assert get_user_model().objects.get(pk=user.pk).is_staff is True
