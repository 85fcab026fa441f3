#!/usr/bin/python3
"""Renders flakeport's pages in headless Chromium (Debian's chromium and
chromedriver, driven by Selenium) and checks what a person sees. Each
command exits non-zero with a message on the first thing that is wrong,
and leaves a screenshot of each page in SHOTS.

  web_check.py live BASE GOFILE SHOTS
      A build of `chatty` is running and has printed its first line. With
      JavaScript off, the home page shows that line (server-rendered).
      With it on: the first line, not the second; then GOFILE is created
      (the build prints its second line), and the second line appears in
      the open page while the build still says "running", then "built".
  web_check.py home BASE SHOTS
      The home page: image names and descriptions, a built and a failed
      build, the failure's error; markup in descriptions, logs and errors
      shown as text, no script of theirs run.
  web_check.py image BASE NAME DIGEST SHOTS
      The image page: the manifest digest, layers with store paths, config.
  web_check.py build BASE NAME SHOTS
      The build page of NAME's latest build, reached from the home page's
      recent builds: its log.
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def fail(msg):
    print(f"web_check: {msg}", file=sys.stderr)
    sys.exit(1)


def browser(javascript=True):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--window-size=1280,1800"):
        o.add_argument(a)
    if not javascript:
        o.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def text(d):
    return d.find_element(By.TAG_NAME, "body").text


def wait_for(what, predicate, secs):
    end = time.time() + secs
    while time.time() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    fail(f"waited {secs} s for {what}")


def no_script_ran(d):
    pwned = d.execute_script("return window.pwned === undefined ? null : String(window.pwned)")
    if pwned is not None:
        fail(f"a script from page content ran: window.pwned = {pwned}")
    if d.find_elements(By.CSS_SELECTOR, "main img, main b, main script"):
        fail("markup from page content became elements")


def shot(d, shots, name):
    os.makedirs(shots, exist_ok=True)
    # The whole page, not just the window.
    d.set_window_size(1280, max(800, d.execute_script("return document.body.scrollHeight") + 40))
    d.save_screenshot(os.path.join(shots, name))


def must_contain(haystack, needle, where):
    if needle not in haystack:
        fail(f"{where} does not show {needle!r}; it shows:\n{haystack}")


def live(base, gofile, shots):
    first = "chatty: first line <script>window.pwned = 'log'</script>"
    second = "chatty: second line"
    d = browser(javascript=False)
    try:
        d.get(base + "/")
        body = text(d)
        must_contain(body, "Building now", "the home page without JavaScript")
        must_contain(body, first, "the running build's log without JavaScript")
        must_contain(body, "app", "the image list without JavaScript")
        shot(d, shots, "home-no-javascript.png")
    finally:
        d.quit()
    d = browser()
    try:
        d.get(base + "/")
        log = wait_for("the running build's log",
                       lambda: [p for p in d.find_elements(By.CSS_SELECTOR, "#running pre.log")
                                if "chatty:" in p.text], 10)[0]
        must_contain(log.text, first, "the running build's log")
        if second in log.text:
            fail("the second line is there before the build printed it")
        article = log.find_element(By.XPATH, "..")
        status = article.find_element(By.CSS_SELECTOR, "[id^=status-]")
        if status.text != "running":
            fail(f"the build's status is {status.text!r}, not running")
        open(gofile, "w").close()
        wait_for("the second line to appear in the open page", lambda: second in log.text, 60)
        # The build sleeps 3 s after its second line: still running now.
        if status.text != "running":
            fail(f"the second line came with the status {status.text!r}, not while running")
        shot(d, shots, "home-live-build.png")
        wait_for("the status to say built", lambda: status.text.startswith("built"), 60)
        no_script_ran(d)
    finally:
        d.quit()


def home(base, shots):
    d = browser()
    try:
        d.get(base + "/")
        body = text(d)
        host = base.split("://", 1)[1]
        for want in (f"docker pull {host}/", "ctr image pull --plain-http", "skopeo copy",
                     "nix run nixpkgs#skopeo", "Recent builds", "Recent failures"):
            must_contain(body, want, "the home page")
        names = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#images a.image")]
        for want in ("app", "chatty", "stock"):
            if want not in names:
                fail(f"image {want} not listed: {names}")
        must_contain(body, "Chatty <img src=x onerror=\"window.pwned = 'description'\"> & slow",
                     "the description, as text,")
        recent = d.find_element(By.ID, "recent").text
        must_contain(recent, "app", "recent builds")
        must_contain(recent, "built", "recent builds")
        failures = d.find_element(By.ID, "failures")
        must_contain(failures.text, "failing:latest", "recent failures")
        must_contain(failures.text, "nix build of", "the failure's error")
        must_contain(failures.text, "failing: <b>bold</b> <script>window.pwned = 'failure'</script>",
                     "the failure's error, as text,")
        no_script_ran(d)
        shot(d, shots, "home.png")
    finally:
        d.quit()


def image(base, name, digest, shots):
    d = browser()
    try:
        d.get(f"{base}/images/{name}")
        body = text(d)
        must_contain(d.find_element(By.TAG_NAME, "h1").text, name, "the image page's title")
        for want in ("Tag latest", digest, f"{name}@{digest}", "Layers", "/nix/store/",
                     "Entrypoint", "Cmd", "Env", "PATH="):
            must_contain(body, want, "the image page")
        rows = d.find_elements(By.CSS_SELECTOR, "table.layers tbody tr")
        if not rows:
            fail("no layer rows")
        no_script_ran(d)
        shot(d, shots, f"image-{name.replace('/', '-')}.png")
    finally:
        d.quit()


def build(base, name, shots):
    d = browser()
    try:
        d.get(base + "/")
        rows = [r for r in d.find_elements(By.CSS_SELECTOR, "#recent tbody tr")
                if r.find_element(By.TAG_NAME, "td").text == name]
        if not rows:
            fail(f"no recent build of {name}")
        rows[0].find_element(By.CSS_SELECTOR, "a.build").click()
        must_contain(d.find_element(By.TAG_NAME, "h1").text, f"{name}:latest", "the build page's title")
        must_contain(text(d), "building '/nix/store/", "the build page's log")
        no_script_ran(d)
        shot(d, shots, "build.png")
    finally:
        d.quit()


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"live": live, "home": home, "image": image, "build": build}[cmd](*args)


if __name__ == "__main__":
    main()
