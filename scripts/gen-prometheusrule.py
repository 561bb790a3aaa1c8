"""Writes deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yml
(`--check`: exit 1 if the file differs from what would be written)."""
import sys

import yaml

HEAD = """# GENERATED from deploy/prometheus/alerts.yml by scripts/check-deploy.sh's
# rule (edit alerts.yml, then: python3 scripts/gen-prometheusrule.py). CI fails
# when the two differ. The Prometheus Operator loads it; the `release` label
# must match your Prometheus' ruleSelector.
"""

rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "octopods-worker", "labels": {"release": "prometheus"}},
    "spec": {"groups": rules["groups"]},
}
text = HEAD + yaml.safe_dump(doc, sort_keys=False, width=100)
path = "deploy/k8s/prometheusrule.yaml"
if "--check" in sys.argv:
    if open(path).read() != text:
        print(f"{path} is stale: run python3 scripts/gen-prometheusrule.py", file=sys.stderr)
        sys.exit(1)
    print(f"{path}: the same rules as deploy/prometheus/alerts.yml")
else:
    open(path, "w").write(text)

# Every alert documents itself and is tested.
alerts = [r for g in rules["groups"] for r in g["rules"]]
tests = yaml.safe_load(open("deploy/prometheus/alerts_test.yml"))
fired = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a.get("exp_alerts")}
runbook = open("docs/runbook.md").read()
problems = []
for r in alerts:
    name, ann = r["alert"], r.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        if not ann.get(key):
            problems.append(f"{name}: no {key}")
    if name not in fired:
        problems.append(f"{name}: no promtool test sees it fire (alerts_test.yml)")
    if f"## {name}\n" not in runbook:
        problems.append(f"{name}: no section in docs/runbook.md")
    if not ann.get("runbook_url", "").endswith("#" + name.lower()):
        problems.append(f"{name}: runbook_url does not point at its section")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"{len(alerts)} alerts: each with summary, description, runbook_url, a runbook section and a firing test")
