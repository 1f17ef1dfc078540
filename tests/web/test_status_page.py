"""The status page in a real headless Chromium: it loads, its numbers are the coordinator's, a
task added through the CLI appears without a reload, and a click shows a task's attempts."""

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import wait_for

ARTIFACTS = os.environ.get("TATZELWURM_ARTIFACTS", "/var/tmp/tatzelwurm-artifacts")


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("this test needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    # The machine's network is closed: nothing in the background may try to reach out.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1200"):
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    yield d
    d.quit()


def count(browser, state):
    return int(browser.find_element(By.CSS_SELECTOR, f'#counts [data-state="{state}"] b').text)


def test_the_page_shows_the_counts_follows_new_tasks_and_shows_attempts(http, browser):
    http.worker("--slots", "2", "--name", "page-w")
    http.cli("task", "add", "--play", "--tag", "kind=ok", "--", "echo", "hello")
    http.cli("task", "add", "--play", "--tag", "kind=bad", "--", "sh", "-c", "echo oops >&2; exit 3")
    wait_for(lambda: http.ok("GET", "/api/summary")["counts"]["failed"] == 1
             and http.ok("GET", "/api/summary")["counts"]["completed"] == 1, what="the first tasks to end")
    browser.get(f"{http.base}/#token={http.token}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#counts .count"), what="the page to load")
    counts = http.ok("GET", "/api/summary")["counts"]
    for state, n in counts.items():
        assert count(browser, state) == n, state
    assert "page-w" in browser.find_element(By.ID, "workers").text
    wait_for(lambda: "exit code 3" in browser.find_element(By.ID, "failures").text, what="the failure listed")
    wait_for(lambda: browser.find_element(By.ID, "status").text == "live", what="the event stream")
    # Counts per value of a tag key the user picks.
    key = browser.find_element(By.ID, "tagkey")
    key.send_keys("kind")
    key.send_keys(Keys.ENTER)
    wait_for(lambda: "bad" in browser.find_element(By.ID, "breakdown").text, what="the breakdown")
    rows = {r.text.split()[0]: r.text.split()[1:] for r in browser.find_elements(By.CSS_SELECTOR, "#breakdown tr")[1:]}
    # Columns: the states in order; ok completed, bad failed.
    assert rows["ok"][5] == "1" and rows["bad"][6] == "1", rows
    # A task added through the CLI appears, and ends, without a reload.
    marker = browser.execute_script("window.notReloaded = true; return window.notReloaded")
    out = http.cli("task", "add", "--play", "--name", "from-the-cli", "--", "echo", "late")
    assert out
    wait_for(lambda: "from-the-cli" in browser.find_element(By.ID, "tasks").text, what="the new task on the page")
    wait_for(lambda: count(browser, "completed") == 2, what="the counts to follow")
    assert browser.execute_script("return window.notReloaded") is marker is True
    # A click shows the task and its attempts.
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tr.task") if "from-the-cli" in r.text)
    row.click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#attempts tr[data-attempt]"), what="the attempts")
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tr[data-attempt]")
    assert len(attempts) == 1 and "succeeded" in attempts[0].text and "page-w" in attempts[0].text
    assert "late" in browser.find_element(By.ID, "detail").text
    wait_for(lambda: "/s over the last minute" in browser.find_element(By.ID, "rate").text, what="the chart")
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "status-page.png")
    browser.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000


def test_the_page_asks_for_a_token_when_it_has_none_or_a_wrong_one(http, browser):
    browser.get(f"{http.base}/#token=wrong")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), what="the token form")
    browser.find_element(By.ID, "token").send_keys(http.token)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#counts .count"), what="the page after the token")
