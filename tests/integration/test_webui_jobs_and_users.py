"""The jobs page (position in line, owners and admins cancel) and the users page (admins only)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from inference.models import GenerationJob

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture
def people():
    return {
        "admin": User.objects.create_user("boss", password="pw-boss-123", is_staff=True),
        "ann": User.objects.create_user("ann", password="pw-ann-123"),
        "ben": User.objects.create_user("ben", password="pw-ben-123"),
    }


def job(owner, status="queued", **fields):
    return GenerationJob.objects.create(owner=owner, model_name="tiny", status=status, **fields)


def test_queued_jobs_show_their_place_in_the_whole_line_and_members_see_only_theirs(client, people):
    job(people["ben"])
    job(people["ben"])
    mine = job(people["ann"])
    job(people["ann"], status="succeeded", completion_tokens=42, prompt_tokens=7, tokens_per_second=12.5,
        time_to_first_token=0.25, finished_at=timezone.now())
    job(people["ben"], status="running", started_at=timezone.now() - timedelta(seconds=5))
    client.force_login(people["ann"])
    html = client.get("/jobs/").content.decode()
    # Users take turns: ben already has a job running, so ann's comes before both of his queued ones.
    assert f'data-job="{mine.id}"' in html and "#1" in html
    assert "7 + 42" in html and "250 ms" in html and "12.5 tok/s" in html
    assert "Nothing running." in html  # ben's running job is not ann's to see
    assert html.count("data-job=") == 2
    client.force_login(people["admin"])
    assert client.get("/jobs/?partial=1").content.decode().count("data-job=") == 5


def test_owners_and_admins_cancel_a_job_and_others_get_404(client, people):
    anns = job(people["ann"])
    client.force_login(people["ben"])
    assert client.post(f"/jobs/{anns.id}/cancel/").status_code == 404
    anns.refresh_from_db()
    assert anns.status == "queued"
    client.force_login(people["ann"])
    assert client.post(f"/jobs/{anns.id}/cancel/").status_code == 302
    anns.refresh_from_db()
    assert anns.status == "cancelled"
    bens = job(people["ben"])
    client.force_login(people["admin"])
    client.post(f"/jobs/{bens.id}/cancel/")
    bens.refresh_from_db()
    assert bens.status == "cancelled"


def test_an_admin_creates_a_member_promotes_and_deactivates_users(client, people):
    client.force_login(people["admin"])
    client.post("/users/", {"action": "create", "username": "cat", "password": "long-enough-pass-9",
                            "role": "member"})
    cat = User.objects.get(username="cat")
    assert not cat.is_staff and cat.is_active and cat.check_password("long-enough-pass-9")
    client.post("/users/", {"action": "update", "user": cat.pk, "role": "admin", "active": "on"})
    cat.refresh_from_db()
    assert cat.is_staff
    client.post("/users/", {"action": "update", "user": cat.pk, "role": "member"})
    cat.refresh_from_db()
    assert not cat.is_staff and not cat.is_active
    assert client.login(username="cat", password="long-enough-pass-9") is False


def test_the_users_page_explains_what_it_refuses(client, people):
    client.force_login(people["admin"])
    page = client.post("/users/", {"action": "create", "username": "ann", "password": "long-enough-pass-9",
                                   "role": "member"}, follow=True)
    assert "ann already exists." in page.content.decode()
    page = client.post("/users/", {"action": "create", "username": "dan", "password": "123", "role": "member"},
                       follow=True)
    assert "too short" in page.content.decode() and not User.objects.filter(username="dan").exists()
    page = client.post("/users/", {"action": "update", "user": people["admin"].pk, "role": "member",
                                   "active": "on"}, follow=True)
    assert "cannot deactivate yourself" in page.content.decode()
    people["admin"].refresh_from_db()
    assert people["admin"].is_staff


def test_a_member_is_refused_the_users_page(client, people):
    client.force_login(people["ann"])
    assert client.get("/users/").status_code == 403
    assert client.post("/users/", {"action": "create", "username": "x", "password": "long-enough-pass-9",
                                   "role": "admin"}).status_code == 403
    assert not User.objects.filter(username="x").exists()
    assert "Users</a>" not in client.get("/jobs/").content.decode()
