"""A logged-in chat websocket client, as the browser page uses it."""

from __future__ import annotations

import json
import re

import httpx
from websockets.sync.client import connect

from tests.servers import ADMIN_PASSWORD, HearthServer


def login(server: HearthServer, username: str = "admin", password: str = ADMIN_PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=True)
    page = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post("/login/", data={"username": username, "password": password,
                                            "csrfmiddlewaretoken": token}, headers={"Referer": f"{server.base_url}/login/"})
    assert "sessionid" in client.cookies, response.text[:500]
    return client


class ChatSocket:
    def __init__(self, server: HearthServer, session: httpx.Client):
        cookie = f"sessionid={session.cookies['sessionid']}"
        self.socket = connect(f"ws://127.0.0.1:{server.port}/ws/chat/", origin=server.base_url,
                              additional_headers={"Cookie": cookie}, open_timeout=30)

    def send(self, **message) -> None:
        self.socket.send(json.dumps(message))

    def receive(self, timeout: float = 60) -> dict:
        return json.loads(self.socket.recv(timeout=timeout))

    def events_until_terminal(self, timeout: float = 120) -> list[dict]:
        received = []
        while True:
            message = self.receive(timeout)
            if message["type"] != "event":
                continue
            received.append(message)
            if message["event"]["kind"] in ("done", "error"):
                return received

    def close(self) -> None:
        self.socket.close()
