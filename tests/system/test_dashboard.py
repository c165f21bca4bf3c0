"""The dashboard in real headless Chromium (Debian's chromium and chromium-driver, driven
by selenium) against airut-web as its unit runs it in the lab guest, with the real
runner, real task units and the demo model: live task lists, the agent's actions,
cgroup samples, the stop button, a real blocked request, hostile text rendered inert,
the CSRF guard, what the web user may touch, and health."""

from __future__ import annotations

import http.client
import json
import re
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.system.forward import Forward
from tests.system.lab import bash, say, wait_until
from tests.system.mail import signed

pytestmark = pytest.mark.system

XSS = ('<script>window.__xss="script"</script><img src=x onerror="window.__xss=\'img\'">'
       '<a href="javascript:window.__xss=\'link\'">click</a>')


@pytest.fixture(scope="module")
def web(lab):
    lab.guest("systemctl", "start", "airut-web.service")
    wait_until(lambda: lab.guest("systemctl", "is-active", "airut-web.service",
                                 check=False).stdout.strip() == "active", 30, "airut-web")
    forward = Forward(lab.leader, 5200)
    yield forward
    forward.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def request(web: Forward, method: str, path: str, headers: dict | None = None
            ) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return r.status, body


def text_of(browser, css: str) -> str:
    """The text of what matches, read in one step (live refreshes replace elements)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => e.innerText).join(' ');", css)


def task_row(browser, task: str) -> str | None:
    """The text of the task's row on the overview, as the browser shows it now."""
    return browser.execute_script(
        "const a = document.querySelector('table.tasks a[href=\"/task/' + arguments[0] + "
        "'\"]'); return a ? a.closest('tr').innerText : null;", task)


def row_state(browser, task: str) -> str | None:
    return browser.execute_script(
        "const a = document.querySelector('table.tasks a[href=\"/task/' + arguments[0] + "
        "'\"]'); return a ? a.closest('tr').querySelector('.badge').innerText : null;", task)


def no_reload(browser) -> None:
    browser.execute_script("window.__same_page = true;")


def same_page(browser) -> bool:
    return browser.execute_script("return window.__same_page === true;")


def csp_violations(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser")
            if "Content Security Policy" in e["message"]]


# -- live -------------------------------------------------------------------------------


def test_overview_shows_a_task_running_then_finished_without_a_reload(lab, web, browser):
    browser.get(web.url + "/")
    no_reload(browser)
    marker = lab.scenario("web-live", [bash("sleep 6; echo slept"), say("Done sleeping.")])
    task = lab.submit_no_wait(f"{marker} sleep a little", repo="demo")
    wait_until(lambda: row_state(browser, task) == "running", 60, "the task shown running")
    wait_until(lambda: row_state(browser, task) == "success", 90, "the task shown finished")
    assert same_page(browser)  # the page was updated in place, never reloaded
    row = task_row(browser, task)
    assert re.search(r"\$\d+\.\d{4}", row), row  # its cost
    assert csp_violations(browser) == []


def test_task_page_shows_the_scripted_actions_in_order_and_real_cgroup_samples(lab, web,
                                                                                browser):
    marker = lab.scenario("web-actions", [
        bash("echo first-action"), bash("sleep 4; echo second-action"),
        say("All actions done.")])
    reply = lab.submit(f"{marker} do three things", repo="demo")
    task = reply["task_id"]
    browser.get(f"{web.url}/task/{task}")
    tools = browser.find_elements(By.CSS_SELECTOR, "li.ev.tool summary")
    assert [t.text.split()[0] for t in tools] == ["Bash", "Bash"]
    assert "echo first-action" in tools[0].text and "second-action" in tools[1].text
    page = browser.find_element(By.TAG_NAME, "main").text
    assert page.index("first-action") < page.index("second-action") < page.index(
        "All actions done.")
    assert "Result" in text_of(browser, "li.ev.result")
    tools[0].click()  # unfold the first call: its output
    assert "first-action" in text_of(browser, "li.ev.tool pre.result")
    samples = int(browser.find_element(By.CSS_SELECTOR, "dd.samples").text)
    assert samples >= 2
    lines = (lab.conversation_dir(reply["conversation_id"]) / "metrics" / f"{task}.jsonl"
             ).read_text().splitlines()
    memory = [json.loads(line)["memory"] for line in lines]
    assert len(memory) == samples and max(memory) > 1 << 20  # the cgroup's own numbers
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.series")


# -- stop ---------------------------------------------------------------------------------


def test_stop_button_ends_a_running_task(lab, web, browser):
    marker = lab.scenario("web-stop", [bash("sleep 120"), say("never")])
    task = lab.submit_no_wait(f"{marker} take long", repo="demo")
    lab.wait_for_unit(task, timeout=60)
    browser.get(f"{web.url}/task/{task}")
    no_reload(browser)
    wait_until(lambda: "running" in text_of(browser, "h1 .badge"), 30, "running")
    browser.find_element(By.CSS_SELECTOR, "button.stop").click()
    browser.switch_to.alert.accept()
    wait_until(lambda: "stopping" in text_of(browser, "h1 .badge"), 15, "stopping")
    wait_until(lambda: "stopped" in text_of(browser, "h1 .badge")
               and "stopping" not in text_of(browser, "h1 .badge"), 60, "stopped")
    assert same_page(browser)
    reply = lab.wait_reply(task, timeout=30)
    assert reply["outcome"] == "stopped" and "stopped on request" in reply["text"]
    assert "requested by dashboard (" in lab.journal(f"AIRUT_TASK={task}")


# -- network --------------------------------------------------------------------------


def test_network_section_shows_a_real_blocked_request(lab, web, browser):
    marker = lab.scenario("web-net", [
        bash("curl -s -o /dev/null -w '%{http_code}' https://other.test/dashboard-probe; true"),
        say("Tried.")])
    task = lab.submit(f"{marker} fetch", repo="demo")["task_id"]
    browser.get(f"{web.url}/task/{task}")
    blocked = browser.find_elements(By.CSS_SELECTOR, "table.network tr.v-BLOCKED")
    assert any("other.test /dashboard-probe" in row.text for row in blocked), \
        text_of(browser, "table.network")
    assert "network allowlist" in text_of(browser, "p.note")
    allowed = text_of(browser, "table.network tr.v-ALLOWED")
    assert "api.anthropic.com /v1/messages" in allowed


# -- what senders and agents write ----------------------------------------------------


def test_hostile_text_subject_and_tool_output_render_inert(lab, web, browser, dkim_key):
    marker = lab.scenario("web-xss", [bash(f"cat <<'EOF'\n{XSS}\nEOF"), say(f"Answer: {XSS}")])
    before = {t["task"] for t in json.loads(lab.airut("tasks", "--json").stdout)}
    raw, _ = signed(dkim_key, "alice@corp.test", f"Look {XSS}", f"{marker} body {XSS}")
    lab.send_mail(raw, "alice@corp.test")

    def finished() -> str | None:
        return next((t["task"] for t in json.loads(lab.airut("tasks", "--json").stdout)
                     if t["task"] not in before and t["repo"] == "mail"
                     and t["outcome"] not in ("queued", "preparing", "running")), None)

    task = wait_until(finished, 120, "the mailed task to finish")
    for path in ("/", f"/task/{task}", "/repo/mail"):
        browser.get(web.url + path)
        time.sleep(2.5)  # a live refresh too
        assert browser.execute_script("return window.__xss;") is None, path
        assert browser.find_elements(By.CSS_SELECTOR, 'a[href^="javascript:"]') == [], path
        assert browser.find_elements(By.CSS_SELECTOR, "img[onerror]") == [], path
    browser.get(f"{web.url}/task/{task}")
    page = browser.find_element(By.TAG_NAME, "main").text
    assert '<script>window.__xss="script"</script>' in page  # shown as text
    assert f"Subject: Look {XSS}" in page
    browser.find_elements(By.CSS_SELECTOR, "li.ev.tool summary")[0].click()
    assert "<img src=x onerror=" in text_of(browser, "li.ev.tool pre.result")
    assert csp_violations(browser) == []


def test_stop_without_the_csrf_header_or_from_another_origin_writes_nothing(lab, web):
    marker = lab.scenario("web-csrf", [bash("sleep 30"), say("done")])
    task = lab.submit_no_wait(f"{marker} wait", repo="demo")
    lab.wait_for_unit(task, timeout=60)
    control = lab.spool / "control"
    before = sorted(p.name for p in control.glob("*.json"))
    host = f"127.0.0.1:{web.port}"
    for headers in ({}, {"Origin": f"http://{host}"},
                    {"X-Requested-With": "airut-dashboard", "Origin": "http://evil.test"},
                    {"X-Requested-With": "airut-dashboard", "Sec-Fetch-Site": "cross-site"}):
        status, _ = request(web, "POST", f"/api/task/{task}/stop", headers)
        assert status == 403, headers
    assert sorted(p.name for p in control.glob("*.json")) == before
    assert lab.unit_properties(lab.wait_for_unit(task), "ActiveState")["ActiveState"] == \
        "active"
    for path in ("/task/..%2F..%2Fetc%2Fpasswd", "/task/../../../etc/passwd",
                 "/conversation/..", "/conversation/0000000g", "/repo/..%2Fetc",
                 f"/task/{task}x!"):
        assert request(web, "GET", path)[0] == 404, path
    lab.guest("airut", "stop", task)
    assert lab.wait_reply(task, timeout=60)["outcome"] == "stopped"


def test_the_web_user_writes_only_control_and_reads_no_env_file(lab, web):
    marker = lab.scenario("web-user", [bash("sleep 20"), say("done")])
    task = lab.submit_no_wait(f"{marker} wait", repo="demo")
    unit = lab.wait_for_unit(task, timeout=60)
    cid = unit.removeprefix("airut-task-").split("-")[0]
    cdir = f"/var/lib/airut/conversations/{cid}"
    assert lab.guest("test", "-f", f"{cdir}/tasks/{task}.env", check=False).returncode == 0

    def as_web(*command: str):
        return lab.guest("runuser", "-u", "airut-web", "--", *command, check=False)

    for command in (["cat", f"{cdir}/tasks/{task}.env"], ["ls", f"{cdir}/tasks"],
                    ["touch", f"{cdir}/forged"], ["touch", "/var/spool/airut/active/forged.json"],
                    ["touch", "/var/spool/airut/incoming/forged.json"],
                    ["touch", "/var/spool/airut/outgoing/forged"],
                    ["cat", "/etc/airut/credentials/anthropic-api-key"]):
        out = as_web(*command)
        assert out.returncode != 0 and "Permission denied" in out.stderr, command
    # What it needs: conversation state, the stages it shows, its own control/ records.
    assert as_web("cat", f"{cdir}/conversation.json").returncode == 0
    assert as_web("ls", "/var/spool/airut/active", "/var/spool/airut/incoming").returncode == 0
    probe = "/var/spool/airut/control/tmp/web-probe"
    assert as_web("touch", probe).returncode == 0
    lab.guest("rm", "-f", probe)
    # Its unit runs it as that user, and the unit's sandbox allows no more writing.
    pid = lab.guest("systemctl", "show", "-p", "MainPID", "--value", "airut-web").stdout.strip()
    assert lab.guest("ps", "-o", "user=", "-p", pid).stdout.strip() == "airut-web"
    lab.guest("airut", "stop", task)
    lab.wait_reply(task, timeout=60)


# -- health -------------------------------------------------------------------------------


def test_health_turns_degraded_on_a_failed_unit_or_a_quarantined_record(lab, web):
    def health() -> tuple[int, dict]:
        status, body = request(web, "GET", "/api/health")
        return status, json.loads(body)

    def about(what: str) -> list[str]:
        return [r for r in health()[1]["reasons"] if what in r]

    # Other tests share the lab and what is wrong elsewhere comes and goes (a Slack instance
    # reconnecting, a record another test quarantines): only the reasons this test causes count.
    # A channel for a repository without an email block exits 78 and stays failed.
    lab.guest("systemctl", "start", "airut-email@small.service", check=False)
    wait_until(lambda: about("airut-email@small.service failed"), 30,
               "the failed unit in the health")
    assert health()[0] == 503
    lab.guest("systemctl", "reset-failed", "airut-email@small.service")
    wait_until(lambda: not about("airut-email@small"), 30, "the failed unit gone from the health")
    before = about("in failed/incoming")
    lab.guest("install", "-d", "-m", "0770", "/var/spool/airut/failed/incoming")
    lab.guest("sh", "-c", "echo '{}' > /var/spool/airut/failed/incoming/20261202T000000000-"
              "abcdef.json")
    status, body = health()
    assert status == 503, body
    counted = about("in failed/incoming")
    assert counted and counted != before, body
    (lab.spool / "failed" / "incoming" / "20261202T000000000-abcdef.json").unlink()
    assert about("in failed/incoming") == before
