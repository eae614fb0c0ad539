"""Screenshots of every console page for docs/console.md, taken with Playwright and Debian's chromium.

``.venv/bin/python -m tests.browser.screenshots [OUT_DIR]`` starts a real ``tether server`` in a
temporary directory, seeds it (policies, secrets, destinations, agents; a pending approval, a
delegation tree, a revoked tree, a second policy version), signs in as the first admin and saves one
PNG per page in OUT_DIR (default ``docs/console``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.browser.world import DEPLOY, INCIDENT, POLICIES, chromium_or_skip, sign_in, start_node, stop_node

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "console"


def main(out: Path) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        node = start_node(Path(scratch))
        try:
            # A tree: deployer's task with a sub-task for responder; another tree, revoked.
            parent = node.open_task("deployer", DEPLOY)
            node.delegate(
                "deployer", parent["id"], "responder", secrets=["prod/github/token"], destinations=["github"]
            )
            grant = node.agents["deployer"].request(
                "POST",
                f"/v1/tasks/{parent['id']}/grants",
                json={"secret": "prod/github/token", "destination": "github"},
            )
            assert grant.status_code == 201, grant.text
            gone = node.open_task("deployer", {**DEPLOY, "objective": "rotate the deploy key"})
            node.delegate(
                "deployer", gone["id"], "responder", secrets=["prod/github/token"], destinations=["github"]
            )
            revoked = node.api("POST", f"/v1/tasks/{gone['id']}/revoke", json={"reason": "laptop stolen"})
            assert revoked.status_code == 200, revoked.text
            node.open_task("responder", INCIDENT)  # waits for an approval
            tighter = POLICIES.replace("sensitivity <= 2", "sensitivity <= 1")
            deployed = node.api(
                "PUT", "/v1/policies", json={"policies": tighter, "comment": "no confidential tasks"}
            )
            assert deployed.status_code == 201, deployed.text
            node.api("POST", "/v1/audit/checkpoints")

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(node.url + "/ui/login")
                page.screenshot(path=out / "login.png")
                sign_in(page, node)
                shots = {
                    "approvals": "/ui/approvals",
                    "tasks": "/ui/tasks",
                    "task": f"/ui/tasks/{parent['id']}",
                    "task-revoked": f"/ui/tasks/{gone['id']}",
                    "audit": "/ui/audit?kind=approval.*",
                    "reach-overview": "/ui/reach",
                    "reach": "/ui/reach?secret=prod/pagerduty/key",
                    "policies": "/ui/policies?a=1&b=2",
                    "secrets": "/ui/secrets",
                    "destinations": "/ui/destinations",
                }
                for name, path in shots.items():
                    page.goto(node.url + path)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=out / f"{name}.png", full_page=True)
                page.goto(node.url + "/ui/policies")
                page.get_by_label("Agent (name)").fill("responder")
                page.get_by_label("Action").select_option("open_task")
                page.get_by_label("Purpose").fill("incident")
                page.get_by_label("Task sensitivity").select_option("restricted")
                page.get_by_role("button", name="Simulate").click()
                page.locator("#sim-h").scroll_into_view_if_needed()
                page.locator("section", has=page.locator("#sim-h")).screenshot(path=out / "simulator.png")
                browser.close()
        finally:
            stop_node(node)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
