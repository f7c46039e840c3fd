"""The web page in a real Chromium, driven by selenium: run by the Rust test
monitor/tests/monitor/browser.rs against a running fleet and `monitor --serve`.

Usage: check_page.py URL WORKERS TOKEN HOSTILE SHOTS_DIR

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver, given by path, so selenium
downloads nothing. Prints one line per check passed; exits 1 with the reason on the
first one that fails.
"""

import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20


def fail(why):
    print(f"FAILED: {why}", flush=True)
    sys.exit(1)


def total(driver, name):
    # Read in one script: the live part is swapped every second, and an element found
    # in one call may be gone by the next.
    return int(driver.execute_script(f"return document.querySelector('[data-testid=\"total-{name}\"]').textContent"))


def worker_state(driver, worker_id):
    return driver.execute_script(
        f"const r = document.querySelector('[data-testid=\"worker-row\"][data-worker-id=\"{worker_id}\"]');"
        " return r && r.dataset.state;"
    )


def browser(user_data):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={user_data}",
        "--window-size=1280,900",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def click_live(driver, selector):
    """Clicks an element of the live part, finding it again if a refresh swapped it
    between the finding and the click."""
    for _ in range(10):
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    fail(f"{selector} kept being replaced before it could be clicked")


def main():
    url, workers, token, hostile, shots = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    os.makedirs(shots, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as user_data:
        driver = browser(user_data)
        try:
            check(driver, url, workers, token, hostile, shots)
        finally:
            driver.quit()


def check(driver, url, workers, token, hostile, shots):
    wait = WebDriverWait(driver, WAIT)
    driver.get(url)
    # Violations of the CSP from here on are collected, as well as read from the console.
    driver.execute_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    first = total(driver, "done")
    try:
        wait.until(lambda d: total(d, "done") > first)
    except Exception:
        fail(f"total-done stayed at {first} for {WAIT}s: the page does not refresh")
    print(f"ok: the page loads and total-done grows without a reload ({first} -> {total(driver, 'done')})")

    ids = sorted(
        driver.execute_script(
            "return [...document.querySelectorAll('[data-testid=\"worker-row\"]')].map(r => r.dataset.workerId)"
        )
    )
    if ids != [str(k) for k in range(workers)]:
        fail(f"worker rows {ids}, expected one per worker 0..{workers - 1}")
    print(f"ok: one worker-row per worker ({len(ids)})")

    try:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="error-row"]'))
    except Exception:
        fail("no failed attempt shows on the page")
    errors = driver.execute_script(
        "return [...document.querySelectorAll('td.error')].map(e => e.textContent).join(' ')"
    )
    if hostile not in errors:
        fail(f"the hostile error is not shown as text: {errors[:300]!r}")
    injected = driver.execute_script("return document.querySelectorAll('img[src=\"x\"], #live script').length")
    if injected:
        fail(f"{injected} element(s) came from hostile text")
    print("ok: hostile text shows as text and adds no element")

    driver.save_screenshot(os.path.join(shots, "web-1280.png"))

    # Pause worker 0: the page asks for the token once, then sends it.
    click_live(driver, 'button[data-action="pause"][data-worker-id="0"]')
    form = driver.find_element(By.ID, "token-form")
    wait.until(lambda d: form.is_displayed())
    driver.find_element(By.ID, "token-input").send_keys(token)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    try:
        wait.until(lambda d: worker_state(d, 0) == "paused")
    except Exception:
        said = driver.find_element(By.ID, "said").text
        fail(f"worker 0 did not show as paused after the token was typed; the page said {said!r}")
    if driver.execute_script("return sessionStorage.length") != 1:
        fail("the token is not kept in sessionStorage")
    print("ok: pause, after typing the token, pauses worker 0")

    driver.set_window_size(375, 812)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        fail(f"at 375px the page is {overflow}px wider than the window")
    driver.save_screenshot(os.path.join(shots, "web-375.png"))
    print("ok: at 375px nothing overflows the window")

    violations = driver.execute_script("return window.__csp")
    console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    if violations or console:
        fail(f"CSP violations {violations}, console {json.dumps(console)[:600]}")
    print("ok: no console error and no CSP violation")

    # Last, since the failures it causes land in the console: with the fragment
    # unreachable the page says its figures are stale, and stops saying so once it is
    # reachable again.
    stale = '[data-testid="fleet-stale"]'
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/fragment"]})
    try:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, stale))
    except Exception:
        fail("no stale banner while the figures cannot be fetched")
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    try:
        # Backed off after the failures: the next try comes within a few seconds.
        WebDriverWait(driver, 40).until(lambda d: not d.find_elements(By.CSS_SELECTOR, stale))
    except Exception:
        fail("the stale banner stayed after the figures could be fetched again")
    print("ok: the stale banner shows only while the figures cannot be fetched")

    check_failed_list(driver, url, hostile, shots)


def check_failed_list(driver, url, hostile, shots):
    """The failed list (the monitor runs with --db): every fifth video failed, with its
    hostile source as the error; both show as text, and nothing overflows at 375px."""
    driver.get_log("browser")  # what the blocked fragment left in the console
    deadline = time.monotonic() + WAIT
    while True:
        driver.get(url + "failed")
        rows = driver.execute_script(
            "return [...document.querySelectorAll('[data-testid=\"failed-row\"]')].map(r => r.dataset.videoId)"
        )
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not rows:
        fail(f"no failed-row on {url}failed within {WAIT}s")
    odd = [v for v in rows if int(v) % 5 != 0]
    if odd:
        fail(f"videos {odd} are listed as failed, but only every fifth fails")
    sources = driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=\"failed-row\"] td.source')].map(e => e.textContent)"
    )
    if not all(hostile in s for s in sources):
        fail(f"a hostile source is not shown as text: {sources[:2]!r}")
    injected = driver.execute_script("return document.querySelectorAll('img[src=\"x\"], main script').length")
    if injected:
        fail(f"{injected} element(s) came from hostile text on the failed list")
    print(f"failed-row ids: {','.join(rows)}")
    print(f"ok: the failed list shows {len(rows)} failed videos, their hostile sources as text")

    overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        fail(f"at 375px the failed list is {overflow}px wider than the window")
    # Each failed video is a card of labelled values: nothing to scroll sideways to.
    sideways = driver.execute_script(
        "const box = document.querySelector('table.errors').closest('.scroll');"
        " return box.scrollWidth - box.clientWidth"
    )
    if sideways > 0:
        fail(f"at 375px the failed list scrolls {sideways}px sideways inside its box")
    labels = driver.execute_script(
        "const td = document.querySelector('[data-testid=\"failed-row\"] td.error');"
        " return getComputedStyle(td, '::before').content"
    )
    if "last error" not in labels:
        fail(f"at 375px a failed video's error is not labelled: {labels!r}")
    driver.save_screenshot(os.path.join(shots, "failed-375.png"))
    console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    if console:
        fail(f"console on the failed list: {json.dumps(console)[:600]}")
    print("ok: at 375px the failed list is one labelled card a video, overflows nothing, and the console is quiet")


if __name__ == "__main__":
    main()
