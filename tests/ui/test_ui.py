"""The Fine-tuning page, job view and task tab in a real headless Chromium against a real api-server.

The jobs are made by ``airflow dags test`` of tests/ui/dags/finetune_ui_demo.py on two emulators: one job
trained to the end, one still on its way. The tests run in order: the last one scans every response the
browser and the API clients received for the connections' keys and extra header.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlencode

import airflow
import httpx
import pytest
from packaging.version import Version

from tests.ui.auth_manager import PRIVATE_DAG
from tests.ui.conftest import Browser
from tests.ui.harness import DAG_ID, UIDeployment

pytestmark = [pytest.mark.integration, pytest.mark.browser]

API_RESPONSES: list[httpx.Response] = []
# How the page framed by Airflow's UI is signed in: Airflow 3.1's UI moves its token from the cookie into local
# storage (the page then sends it in a header), 3.2+ keeps it in the cookie.
FRAMED_AUTH = "bearer" if Version(airflow.__version__).release < (3, 2) else "cookie"


def _keep(response: httpx.Response) -> httpx.Response:
    API_RESPONSES.append(response)
    return response


@pytest.fixture(scope="module")
def jobs(deployment: UIDeployment) -> dict[str, Any]:
    fast = deployment.emulator_get(False, "/fine_tuning/jobs")["data"]
    slow = deployment.emulator_get(True, "/fine_tuning/jobs")["data"]
    assert len(fast) == 1, fast
    assert len(slow) == 1, slow
    with deployment.client("admin") as api:
        run_id = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["dag_runs"][0]["dag_run_id"]
        # When each create task recorded its job (the job_id XCom's own time): jobs made in one second are
        # listed newest first by it.
        recorded = {
            job["id"]: datetime.fromisoformat(
                api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}/xcomEntries/job_id").json()[
                    "timestamp"
                ]
            )
            for task, (job,) in (("fine_tune", fast), ("fine_tune_slow", slow))
        }
    newest_first = [
        j["id"] for j in sorted([*fast, *slow], key=lambda j: (j["created_at"], recorded[j["id"]]), reverse=True)
    ]
    return {"done": fast[0]["id"], "running": slow[0]["id"], "run_id": run_id, "newest_first": newest_first}


def test_the_plugin_is_registered_by_installing_the_package(deployment: UIDeployment) -> None:
    with deployment.client("admin") as api:
        plugins = _keep(api.get("/api/v2/plugins")).json()["plugins"]
    mine = next(p for p in plugins if p["name"] == "finetune")
    assert [a["url_prefix"] for a in mine["fastapi_apps"]] == ["/finetune"]
    views = {v["destination"]: v for v in mine["external_views"]}
    assert views["nav"]["href"] == "/finetune/"
    assert "task_id={TASK_ID}" in views["task_instance"]["href"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/finetune/"),
        ("GET", "/finetune/api/jobs"),
        ("GET", "/finetune/api/jobs/ftjob-x"),
        ("GET", f"/finetune/api/task?dag_id={DAG_ID}&run_id=r&task_id=fine_tune"),
        ("POST", "/finetune/api/jobs/ftjob-x/cancel"),
    ],
)
def test_no_session_is_401(deployment: UIDeployment, method: str, path: str) -> None:
    with deployment.client(None) as anonymous:
        response = _keep(anonymous.request(method, path, json={} if method == "POST" else None))
    assert response.status_code == 401, response.text


def test_the_list_shows_the_jobs_newest_first(
    browser: Browser, deployment: UIDeployment, jobs: dict[str, Any], tmp_path: Any
) -> None:
    browser.sign_in("admin")
    browser.open("/finetune/", wait_for="#jobs")
    rows = browser.find("#jobs tbody tr")
    assert [r.get_attribute("data-job-id") for r in rows] == jobs["newest_first"]
    done = browser.find(f"tr[data-job-id='{jobs['done']}'] td")
    texts = [c.text for c in done]
    assert texts[1:4] == [DAG_ID, jobs["run_id"], "fine_tune"]
    assert "finetune_default" in texts[4]
    assert "OpenAI" in texts[4]
    assert texts[5] == "gpt-4o-mini-2024-07-18"
    assert texts[6] == "succeeded"
    assert texts[7].startswith("ft:gpt-4o-mini-2024-07-18")
    assert texts[10]  # trained tokens
    running = [c.text for c in browser.find(f"tr[data-job-id='{jobs['running']}'] td")]
    assert "finetune_slow" in running[4]
    assert running[6] in ("validating_files", "queued", "running")
    task_link = browser.find(f"tr[data-job-id='{jobs['done']}'] td a")[3]
    assert unquote(task_link.get_attribute("href")).endswith(f"/dags/{DAG_ID}/runs/{jobs['run_id']}/tasks/fine_tune")
    browser.screenshot("finetune-jobs.png", tmp_path)

    browser.open("/finetune/?status=succeeded", wait_for="#jobs")
    assert [r.get_attribute("data-job-id") for r in browser.find("#jobs tbody tr")] == [jobs["done"]]
    browser.open("/finetune/?dag_id=nope", wait_for="#empty")


def test_the_page_is_in_the_airflow_navigation(browser: Browser, deployment: UIDeployment) -> None:
    browser.sign_in("admin")
    browser.driver.get(deployment.url + "/plugin/finetune")
    frame = browser.wait("iframe[src*='/finetune/']", timeout=60)
    browser.driver.switch_to.frame(frame)
    try:
        browser.wait("#jobs")
        assert browser.find("body")[0].get_attribute("data-auth") == FRAMED_AUTH
    finally:
        browser.driver.switch_to.default_content()
    icon = browser.find("img[src^='data:image/svg+xml']")  # the navigation's icon needs no request
    assert icon
    browser.record()


def test_a_browser_with_no_session_gets_no_data(browser: Browser, deployment: UIDeployment) -> None:
    browser.sign_out()
    browser.open("/finetune/", wait_for="body[data-ready='true']")
    assert browser.find("body")[0].get_attribute("data-auth") == "none"
    assert "Not signed in" in browser.find("#signin")[0].text
    assert not browser.find("#jobs")


def test_a_curve_from_the_result_file_has_one_point_per_row(
    browser: Browser, deployment: UIDeployment, jobs: dict[str, Any], tmp_path: Any
) -> None:
    # The job trained 120 steps: its metrics events report every other step, its result file every step.
    rows = deployment.result_steps(jobs["done"])
    events = deployment.metric_steps(jobs["done"])
    assert len(rows) > len(events) > 5
    browser.sign_in("admin")
    browser.open(f"/finetune/?job_id={jobs['done']}", wait_for="#loss-chart")
    assert browser.find("#curves-source")[0].get_attribute("data-source") == "result_file"
    for series in ("train_loss", "valid_loss"):
        points = browser.find(f"#loss-chart circle[data-series='{series}']")
        assert sorted(int(float(p.get_attribute("data-step"))) for p in points) == rows, series
    assert len(browser.find("#accuracy-chart circle[data-series='train_mean_token_accuracy']")) == len(rows)
    checkpoints = browser.find("#checkpoints tbody tr")
    assert checkpoints
    assert len(browser.find("#checkpoints tr.best .badge")) == 1
    assert browser.find("#events li")
    assert '"model": "gpt-4o-mini-2024-07-18"' in browser.find("#request")[0].text
    assert not browser.find("#actions")  # an ended job has nothing to pause, resume or cancel
    browser.screenshot("finetune-job.png", tmp_path)


def test_the_task_instance_tab_shows_that_tasks_job(
    browser: Browser, deployment: UIDeployment, jobs: dict[str, Any]
) -> None:
    browser.sign_in("admin")
    run = jobs["run_id"]
    browser.driver.get(f"{deployment.url}/dags/{DAG_ID}/runs/{run}/tasks/fine_tune/plugin/finetune_task")
    frame = browser.wait("iframe[src*='task_id=fine_tune']", timeout=60)
    browser.driver.switch_to.frame(frame)
    try:
        browser.wait("#loss-chart")
        assert jobs["done"] in browser.find("h1")[0].text
        assert browser.find("body")[0].get_attribute("data-auth") == FRAMED_AUTH
    finally:
        browser.driver.switch_to.default_content()
    browser.open(
        "/finetune/?" + urlencode({"dag_id": DAG_ID, "run_id": run, "task_id": "fine_tune"}), wait_for="#loss-chart"
    )
    assert jobs["done"] in browser.find("h1")[0].text
    tab = {"dag_id": DAG_ID, "run_id": run, "map_index": "{MAP_INDEX}"}  # as the UI fills it for an unmapped task
    browser.open("/finetune/?" + urlencode({**tab, "task_id": "upload"}), wait_for="#no-job")
    # A job with no metrics yet says so instead of drawing an empty chart.
    browser.open("/finetune/?" + urlencode({**tab, "task_id": "fine_tune_slow"}), wait_for="#no-metrics")


def test_a_viewer_sees_no_buttons_and_is_refused(
    browser: Browser, deployment: UIDeployment, jobs: dict[str, Any]
) -> None:
    browser.sign_in("viewer")
    browser.open(f"/finetune/?job_id={jobs['running']}", wait_for="dl.facts")
    assert not browser.find("#actions button")
    with deployment.client("viewer") as viewer:
        assert _keep(viewer.get(f"/finetune/api/jobs/{jobs['running']}")).json()["can_edit"] is False
        for action in ("pause", "cancel"):
            refused = _keep(viewer.post(f"/finetune/api/jobs/{jobs['running']}/{action}", json={}))
            assert refused.status_code == 403, refused.text
    status = deployment.emulator_get(True, f"/fine_tuning/jobs/{jobs['running']}")["status"]
    assert status in ("validating_files", "queued", "running")


def test_a_user_sees_only_the_jobs_of_the_dags_they_may_read(
    browser: Browser, deployment: UIDeployment, jobs: dict[str, Any]
) -> None:
    # ``partial`` has the editor's role but may read one DAG only (tests/ui/auth_manager.py), and that DAG's job
    # is hidden from the other users: each sees only its own side.
    private = [j["id"] for j in deployment.emulator_get(False, "/fine_tuning/jobs", private=True)["data"]]
    assert len(private) == 1, private
    with deployment.client("partial") as partial:
        listed = _keep(partial.get("/finetune/api/jobs")).json()
        assert [j["job_id"] for j in listed["jobs"]] == private
        assert listed["filters"]["dags"] == [PRIVATE_DAG]
        assert _keep(partial.get("/finetune/api/jobs", params={"dag_id": DAG_ID})).json()["jobs"] == []
        own = _keep(partial.get(f"/finetune/api/jobs/{private[0]}"))
        assert own.status_code == 200, own.text
        assert own.json()["can_edit"] is True  # the refusals below come from the DAG, not from the role
        for job_id in (jobs["done"], jobs["running"]):
            hidden = _keep(partial.get(f"/finetune/api/jobs/{job_id}"))
            assert hidden.status_code == 404, hidden.text
            assert "status" not in hidden.json()  # a refusal, not the job
        for action in ("pause", "cancel"):
            refused = _keep(partial.post(f"/finetune/api/jobs/{jobs['running']}/{action}", json={}))
            assert refused.status_code in (403, 404), refused.text
        task = {"dag_id": DAG_ID, "run_id": jobs["run_id"], "task_id": "fine_tune"}
        tab = _keep(partial.get("/finetune/api/task", params=task))
        assert tab.status_code == 403, tab.text
    status = deployment.emulator_get(True, f"/fine_tuning/jobs/{jobs['running']}")["status"]
    assert status in ("validating_files", "queued", "running")
    with deployment.client("admin") as admin:
        assert private[0] not in {j["job_id"] for j in _keep(admin.get("/finetune/api/jobs")).json()["jobs"]}
    browser.sign_in("partial")
    browser.open("/finetune/", wait_for="#jobs")
    assert [r.get_attribute("data-job-id") for r in browser.find("#jobs tbody tr")] == private


def test_a_cross_site_write_is_refused(deployment: UIDeployment, jobs: dict[str, Any]) -> None:
    with deployment.client("editor") as editor:
        url = f"/finetune/api/jobs/{jobs['running']}/pause"
        forged = _keep(editor.post(url, json={}, headers={"Origin": "http://evil.example"}))
        assert forged.status_code == 403, forged.text
        forged = _keep(editor.post(url, json={}, headers={"Sec-Fetch-Site": "cross-site"}))
        assert forged.status_code == 403, forged.text
        form = _keep(editor.post(url, content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"}))
        assert form.status_code == 415, form.text
    assert deployment.emulator_get(True, f"/fine_tuning/jobs/{jobs['running']}")["status"] != "paused"


def test_an_editors_cancel_cancels_the_job(browser: Browser, deployment: UIDeployment, jobs: dict[str, Any]) -> None:
    browser.sign_in("editor")
    browser.open(f"/finetune/?job_id={jobs['running']}", wait_for="#actions")
    verbs = [b.get_attribute("data-action") for b in browser.find("#actions button")]
    assert "cancel" in verbs
    assert "resume" not in verbs
    browser.find("#actions button[data-action='cancel']")[0].click()
    browser.driver.switch_to.alert.accept()
    browser.wait("[data-status='cancelled'], [data-status='cancelling']")
    browser.record()
    deadline = time.monotonic() + 30
    while deployment.emulator_get(True, f"/fine_tuning/jobs/{jobs['running']}")["status"] != "cancelled":
        assert time.monotonic() < deadline, "the job was not cancelled"
        time.sleep(0.5)
    with deployment.client("editor") as editor:
        again = _keep(editor.post(f"/finetune/api/jobs/{jobs['running']}/pause", json={}))
    assert again.status_code == 409, again.text
    assert "already ended" in again.json()["detail"]


def test_no_key_password_or_extra_header_reaches_the_browser(
    browser: Browser, deployment: UIDeployment, responses: list[dict[str, Any]]
) -> None:
    browser.record()
    assert len(responses) > 10
    assert any("/finetune/api/jobs" in r["url"] for r in responses)
    for recorded in responses:
        text = recorded["body"] + repr(recorded["headers"])
        for secret in deployment.secrets:
            assert secret not in text, f"a secret reached the browser in {recorded['url']}"
    for response in API_RESPONSES:
        text = response.text + repr(dict(response.headers))
        for secret in deployment.secrets:
            assert secret not in text, f"a secret was in the answer to {response.request.url}"
