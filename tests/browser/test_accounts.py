"""Signing up, logging in and out, and what each role may do, as a user sees it in the pages."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from playwright.sync_api import Page, expect

from tests.browser.web import app_url, login, register
from tests.support.server import ServerProcess

SESSION_KEY = "streamplat.session"


def stored_session(page: Page) -> dict[str, object]:
    """The tokens the app keeps in localStorage."""
    raw = page.evaluate(f"localStorage.getItem('{SESSION_KEY}')")
    assert raw, "no session stored"
    session: dict[str, object] = json.loads(raw)
    return session


def test_wrong_password_is_refused_with_a_message(web: ServerProcess, open_page: Callable[..., Page]) -> None:
    web.register("carol")
    page = open_page()
    page.goto(app_url(web, "/login"))
    page.fill("input[name=email]", "carol@example.com")
    page.fill("input[name=password]", "not-her-password")
    page.click("button[type=submit]")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Invalid email or password")
    expect(page).to_have_url(app_url(web, "/login"))
    expect(page.locator("#account")).to_contain_text("Log in")
    assert page.evaluate(f"localStorage.getItem('{SESSION_KEY}')") is None
    # The right password then works and lands a streamer on the dashboard.
    page.fill("input[name=password]", "password123")
    page.click("button[type=submit]")
    expect(page).to_have_url(app_url(web, "/dashboard"))
    expect(page.locator("#account")).to_contain_text("carol")


def test_bad_registration_shows_each_fields_message(
    web: ServerProcess, open_page: Callable[..., Page]
) -> None:
    page = open_page("phone")
    page.goto(app_url(web, "/register"))
    page.fill("input[name=username]", "ab")
    page.fill("input[name=email]", "not-an-email")
    page.fill("input[name=password]", "123")
    page.click("button[type=submit]")
    # The server's 422 details, each under its own field.
    expect(page.locator("[data-error-for=username]")).to_have_text("minimum 3 characters required")
    expect(page.locator("[data-error-for=email]")).to_have_text("must be a valid email")
    expect(page.locator("[data-error-for=password]")).to_have_text("minimum 6 characters required")
    expect(page.locator("input[name=email]")).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(app_url(web, "/register"))

    # A taken email is reported at the email field too.
    web.register("dave")
    page.fill("input[name=username]", "dave2")
    page.fill("input[name=email]", "dave@example.com")
    page.fill("input[name=password]", "password123")
    page.click("button[type=submit]")
    expect(page.locator("[data-error-for=email]")).to_have_text("Email already registered")
    expect(page.locator("[data-error-for=username]")).to_be_hidden()


def test_viewer_dashboard_explains_that_viewers_cannot_stream(
    web: ServerProcess, open_page: Callable[..., Page]
) -> None:
    page = open_page()
    register(page, web, "erin", "viewer")
    expect(page).to_have_url(app_url(web, "/"))  # a viewer starts on the live page
    expect(page.locator("#live-grid")).to_contain_text("Nobody is live right now")
    expect(page.locator("a", has_text="Go live")).to_have_count(0)
    page.get_by_role("link", name="My account").click()
    expect(page).to_have_url(app_url(web, "/dashboard"))
    expect(page.locator(".viewer-notice")).to_contain_text("Viewer accounts cannot create streams")
    expect(page.locator("#create-stream")).to_have_count(0)
    expect(page.locator("[data-action=start]")).to_have_count(0)
    # The server agrees: the role is enforced there, not only hidden here.
    token = str(stored_session(page)["access_token"])
    r = web.main.post("/api/streams", json={"name": "sneaky"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403


def test_session_is_renewed_before_expiry_and_logout_revokes_it(
    web: ServerProcess, open_page: Callable[..., Page]
) -> None:
    web.register("frank")
    page = open_page()
    login(page, web, "frank")
    expect(page.locator(".stream-list")).to_contain_text("No streams yet")
    first = stored_session(page)

    # Near expiry, the app spends the refresh token for a new pair by itself.
    page.evaluate(
        """key => { const s = JSON.parse(localStorage.getItem(key));
                    s.expires_at = Date.now() + 3000; localStorage.setItem(key, JSON.stringify(s)); }""",
        SESSION_KEY,
    )
    page.reload()
    page.wait_for_function(
        "([key, old]) => JSON.parse(localStorage.getItem(key) || '{}').refresh_token !== old",
        arg=[SESSION_KEY, first["refresh_token"]],
        timeout=10_000,
    )
    second = stored_session(page)
    assert second["access_token"] != first["access_token"]
    # (Replaying the spent token would make the server end this login: it works once.)

    # An access token the server no longer accepts: one refresh, and the page carries on.
    page.evaluate(
        """key => { const s = JSON.parse(localStorage.getItem(key));
                    s.access_token = 'garbage'; localStorage.setItem(key, JSON.stringify(s)); }""",
        SESSION_KEY,
    )
    page.reload()
    expect(page.locator(".stream-list")).to_contain_text("No streams yet")
    expect(page).to_have_url(app_url(web, "/dashboard"))
    third = stored_session(page)
    assert third["access_token"] != "garbage" and third["refresh_token"] != second["refresh_token"]

    # Log out: back to the login page, and the refresh token no longer works anywhere.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(app_url(web, "/login"))
    expect(page.locator(".toast")).to_have_text("You are logged out.")
    assert page.evaluate(f"localStorage.getItem('{SESSION_KEY}')") is None
    refreshed = httpx.post(web.url("auth", "/auth/refresh"), json={"refresh_token": third["refresh_token"]})
    assert refreshed.status_code == 401
    # Pages that need an account send you to log in, and back afterwards.
    page.goto(app_url(web, "/dashboard"))
    expect(page).to_have_url(app_url(web, "/login?next=%2Fdashboard"))
    expect(page.locator(".auth-card")).to_contain_text("Please log in to see this page.")
    page.fill("input[name=email]", "frank@example.com")
    page.fill("input[name=password]", "password123")
    page.click("button[type=submit]")
    expect(page).to_have_url(app_url(web, "/dashboard"))
