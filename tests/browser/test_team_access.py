"""Groups in Chromium: the admin makes a group on the Groups page, puts Alice in it and gives it research-tiny on the
model's page; Bob's chat picker then lacks research-tiny and Alice's has it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENSHOTS, log_in
from tests.team import PASSWORD, start_team_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_gguf):
    team = start_team_server(tmp_path_factory.mktemp("team-browser"), tiny_gguf)
    yield team
    team.server.stop()


def picker(page, server, username: str) -> list[str]:
    log_in(page, server, username, PASSWORD)
    return page.locator("#model-picker option").evaluate_all("options => options.map(o => o.value)")


def test_an_admin_gives_a_model_to_a_group_and_a_member_of_another_no_longer_sees_it(browser, team):
    server = team.server
    admin = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    log_in(admin, server)
    admin.get_by_role("link", name="Groups").click()
    expect(admin.get_by_role("heading", name="Groups")).to_be_visible()
    admin.fill("#create-group input[name=name]", "labs")
    admin.get_by_role("button", name="Create group").click()
    expect(admin.get_by_role("heading", name="labs")).to_be_visible()
    admin.select_option("#add-member select[name=user]", label="alice")
    admin.get_by_role("button", name="Add to group").click()
    expect(admin.locator(".flash")).to_contain_text("Added alice to labs")
    expect(admin.locator('#members tr[data-member="alice"]')).to_be_visible()
    admin.goto(f"{server.base_url}/models/research-tiny/")
    admin.get_by_label("Only the members of these groups:").check()
    admin.locator("#model-access").get_by_label("labs").check()
    admin.get_by_role("button", name="Save access").click()
    expect(admin.locator(".flash")).to_contain_text("Only the members of labs and admins may use research-tiny")
    admin.goto(f"{server.base_url}/users/groups/")
    expect(admin.locator('#groups tr[data-group="labs"]')).to_contain_text("1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "groups.png"), full_page=True)
    admin.goto(f"{server.base_url}/audit/")
    expect(admin.locator("#audit")).to_contain_text("model.access")
    expect(admin.locator("#audit")).to_contain_text("group.member_add")
    admin.context.close()

    bob = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    assert picker(bob, server, "bob") == ["open-tiny"]
    assert bob.goto(f"{server.base_url}/models/research-tiny/").status == 404
    bob.context.close()
    alice = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    assert sorted(picker(alice, server, "alice")) == ["open-tiny", "research-tiny"]
    alice.context.close()
