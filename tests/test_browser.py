"""A real browser on the chat example: a message sent in one window appears in the other.

Headless Chromium from Debian (``apt-get install -y chromium chromium-driver``), driven
through chromedriver's W3C WebDriver HTTP API with urllib. Why not Selenium: the test needs
eight WebDriver commands, each one JSON POST; talking to chromedriver directly adds no
dependency and nothing can download a browser or a driver at run time.
"""

import json
import shutil
import urllib.error
import urllib.request

import pytest

import procs
from procs import wait_until
from test_examples import HOST, run_example

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# The W3C key under which an element reference travels.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver: apt-get install -y chromium chromium-driver")


class WebDriverError(Exception):
    pass


class Browser:
    """The handful of WebDriver commands the test uses, over plain HTTP."""

    def __init__(self, driver_port):
        self.base = f"http://{HOST}:{driver_port}"
        self.session = None

    def call(self, method, path, payload=None, timeout=30):
        url = self.base + (f"/session/{self.session}" if self.session else "") + path
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise WebDriverError(f"{method} {path}: {exc.read()[:500]!r}") from None

    def start(self, user_data_dir):
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic", f"--user-data-dir={user_data_dir}"]
        capabilities = {"browserName": "chrome",
                        "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}},
                          timeout=60)
        self.session = value["sessionId"]

    def quit(self):
        if self.session:
            try:
                self.call("DELETE", "", timeout=10)
            finally:
                self.session = None

    def open(self, url):
        self.call("POST", "/url", {"url": url})

    def new_window(self):
        return self.call("POST", "/window/new", {"type": "window"})["handle"]

    def window(self):
        return self.call("GET", "/window")

    def switch_to(self, handle):
        self.call("POST", "/window", {"handle": handle})

    def find(self, css):
        return self.call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css, text):
        self.call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self.call("POST", f"/element/{self.find(css)}/click", {})

    def run(self, script, *args):
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})


def _messages(browser):
    return browser.run("return Array.from(document.querySelectorAll('#log li'),"
                       " li => li.textContent);")


def _driver_ready(port):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/status", timeout=2) as response:
            return json.loads(response.read())["value"]["ready"]
    except (OSError, ValueError, KeyError):
        return False


def test_chat_message_travels_between_two_browser_windows(tmp_path):
    # chromedriver in its own process group (procs does that): killing the group at the end
    # ends the driver and any browser it started.
    with procs.Processes() as processes, run_example("examples.chat:app") as chat:
        driver = processes.start([CHROMEDRIVER, "--port=0", "--allowed-ips=127.0.0.1"])
        driver_port = int(driver.wait_for(r"started successfully on port (\d+)",
                                          stream="stdout")[1])
        wait_until(lambda: _driver_ready(driver_port), what="chromedriver to be ready")
        browser = Browser(driver_port)
        try:
            browser.start(tmp_path / "profile")
            url = f"http://{HOST}:{chat.port}/"
            first = browser.window()
            browser.open(url)
            second = browser.new_window()
            browser.switch_to(second)
            browser.open(url)
            # Both pages are parked in a long poll before anything is sent.
            wait_until(lambda: chat.json("GET", "/stats")[1]["waiters"] == 2,
                       what="both windows to long-poll")
            # A reload would lose this marker: the message must arrive in the live page.
            browser.run("window.unreloaded = true;")

            browser.switch_to(first)
            browser.type("#name", "alice")
            browser.type("#text", "hello from window one")
            browser.click("#send")

            browser.switch_to(second)
            shown = wait_until(lambda: _messages(browser),
                               what="the message in the second window")
            assert shown == ["alicehello from window one"]
            assert browser.run("return window.unreloaded === true;")

            # And back: the second window answers, the first sees it.
            browser.type("#name", "bob")
            browser.type("#text", "hi alice")
            browser.click("#send")
            browser.switch_to(first)
            wait_until(lambda: len(_messages(browser)) == 2,
                       what="the reply in the first window")
            assert _messages(browser) == ["alicehello from window one", "bobhi alice"]
            assert browser.run("return document.getElementById('text').value;") == ""
        finally:
            try:
                browser.quit()
            except (OSError, WebDriverError):
                pass  # the driver is killed with its group anyway
