"""A student (or instructor) of the hub, over HTTP as a browser would: log in, wait for the server, act.

Used by the load script (hub/load.py) and the hub tests. Every request goes
to the hub's URL (127.0.0.1), through the proxy, with the hub's own login
form and the single-user server's OAuth round trip.
"""
import json
import time

import requests

COURSE_ID = "bnkit"


class HubError(RuntimeError):
    pass


class HubUser:
    def __init__(self, url, name, password, timeout=600):
        self.url = url.rstrip("/") + "/"
        self.name = name
        self.password = password
        self.timeout = timeout
        self.s = requests.Session()
        self.server = f"{self.url}user/{name}/"

    def login(self):
        """The login form, then the spawn and the OAuth redirects, until the user's own server answers."""
        r = self.s.get(self.url + "hub/login", timeout=self.timeout)
        r.raise_for_status()
        xsrf = self.s.cookies.get("_xsrf", path="/hub/") or self.s.cookies.get("_xsrf")
        r = self.s.post(self.url + "hub/login?next=", timeout=self.timeout,
                        data={"username": self.name, "password": self.password, "_xsrf": xsrf})
        if r.status_code >= 400 or "/hub/login" in r.url and "Invalid" in r.text:
            raise HubError(f"login of {self.name} failed: HTTP {r.status_code} at {r.url}")
        deadline = time.monotonic() + self.timeout
        while True:  # the spawn page polls; a browser would follow the progress page, we ask the server
            r = self.s.get(self.server + "api/status", timeout=self.timeout)
            if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
                break
            if time.monotonic() > deadline:
                raise HubError(f"server of {self.name} not ready after {self.timeout} s (HTTP {r.status_code})")
            if "/hub/spawn-pending/" in r.url or r.status_code in (202, 424, 503):
                time.sleep(1)
                continue
            # not started yet (e.g. a redirect to /hub/home): ask for it, as the spawn page would
            self.s.get(self.url + f"hub/spawn/{self.name}", timeout=self.timeout)
            time.sleep(1)
        return self

    def _xsrf(self):
        return self.s.cookies.get("_xsrf", path=f"/user/{self.name}/") or self.s.cookies.get("_xsrf") or ""

    def post(self, path, **kw):
        r = self.s.post(self.server + path, headers={"X-XSRFToken": self._xsrf()}, timeout=self.timeout, **kw)
        if r.status_code >= 400:
            raise HubError(f"{self.name}: POST {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r

    def assignments(self):
        r = self.s.get(self.server + "assignments", params={"course_id": COURSE_ID}, timeout=self.timeout)
        r.raise_for_status()
        return r.json()

    def action(self, what, assignment):
        """fetch, submit or fetch_feedback through nbgrader's assignment-list extension (the Assignments tab)."""
        r = self.post(f"assignments/{what}", data={"assignment_id": assignment, "course_id": COURSE_ID})
        out = r.json()
        if isinstance(out, dict) and not out.get("success", True):
            raise HubError(f"{self.name}: {what} {assignment}: {out.get('value') or out}")
        return out

    def get_notebook(self, path):
        r = self.s.get(self.server + "api/contents/" + path, params={"content": 1}, timeout=self.timeout)
        r.raise_for_status()
        return r.json()["content"]

    def put_notebook(self, path, nb):
        r = self.s.put(self.server + "api/contents/" + path, headers={"X-XSRFToken": self._xsrf()},
                       data=json.dumps({"type": "notebook", "format": "json", "content": nb}),
                       timeout=self.timeout)
        if r.status_code >= 400:
            raise HubError(f"{self.name}: save {path}: HTTP {r.status_code}: {r.text[:300]}")

    def stop_server(self):
        self.s.delete(self.url + f"hub/api/users/{self.name}/server", timeout=self.timeout,
                      headers={"X-XSRFToken": self.s.cookies.get("_xsrf", path="/hub/") or ""})
