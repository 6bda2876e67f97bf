#!/usr/bin/env bash
# Checks the monitoring files of the Helm chart (helm/gmmas/files/):
#   1. the Prometheus rules: `promtool check rules` and `promtool test rules`, and that every
#      alert has a unit test where it fires and one where it does not;
#   2. the Grafana dashboard: its JSON is type-checked against the `Dashboard` type of
#      @grafana/schema (`tsc --noEmit --strict`), then a Python check that every panel has a
#      title, description, unit, gridPos, a unique id and queries that use only GMMAS metrics;
#   3. negative tests: a dashboard with a broken panel, a dashboard that queries an unknown
#      metric, a rule file with a broken expression and a rule file with a changed threshold
#      must each be rejected. The script fails if any of them passes.
#
# Installs what it lacks: Debian's `prometheus` package (for promtool; its service is kept
# from starting), and @grafana/schema + typescript in ${GMMAS_CACHE:-~/.cache/gmmas}/ops-npm.
# Exits 0 only when every check passes.
set -euo pipefail

cd "$(dirname "$0")/.."
FILES=helm/gmmas/files
RULES=$FILES/alerts/gmmas-rules.yaml
RULE_TESTS=$FILES/alerts/gmmas-rules.test.yaml
DASHBOARD=$FILES/dashboards/gmmas.json
CACHE=${GMMAS_CACHE:-$HOME/.cache/gmmas}
NPM_DIR=$CACHE/ops-npm
VENV=$CACHE/ops-venv
SCHEMA_VERSION=13.2.3

WORK=$(mktemp -d)
TS_DIR=""
cleanup() {
  rm -rf "$WORK"
  if [[ -n $TS_DIR ]]; then rm -rf "$TS_DIR"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
die() {
  printf 'ops-check-monitoring: %s\n' "$*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------------------

ensure_promtool() {
  if command -v promtool >/dev/null; then return; fi
  step "installing Debian's prometheus package (for promtool)"
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || die "promtool is missing and installing it needs root (apt-get install prometheus)"
    sudo=(sudo)
  fi
  # The package starts a Prometheus service on :9090 after install; a policy-rc.d that
  # answers 101 keeps it from starting. One already in place is left as it is.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus ||
      {
        "${sudo[@]}" apt-get update -qq &&
          "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
      }
  } >"$WORK/apt.log" 2>&1 || rc=$?
  if ((made_policy)); then "${sudo[@]}" rm -f "$policy"; fi
  # Should a service have started anyway, stop it and keep it from starting at boot.
  "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
  "${sudo[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
  if ((rc != 0)); then
    tail -n 20 "$WORK/apt.log" >&2
    die "apt-get install prometheus failed"
  fi
  command -v promtool >/dev/null || die "prometheus installed but promtool is not on PATH"
}

# The npm folder is shared with another script: add what is missing, remove nothing.
ensure_npm() {
  command -v npm >/dev/null || die "npm is missing (Node.js is needed for the dashboard type check)"
  mkdir -p "$NPM_DIR"
  if [[ ! -f $NPM_DIR/package.json ]]; then
    printf '{\n  "name": "gmmas-ops-npm",\n  "private": true\n}\n' >"$NPM_DIR/package.json"
  fi
  local missing=() have
  have=$(node -p "try { require('$NPM_DIR/node_modules/@grafana/schema/package.json').version } catch (e) { '' }")
  [[ $have == "$SCHEMA_VERSION" ]] || missing+=("@grafana/schema@$SCHEMA_VERSION")
  [[ -x $NPM_DIR/node_modules/.bin/tsc ]] || missing+=(typescript)
  if ((${#missing[@]})); then
    step "npm install ${missing[*]} (in $NPM_DIR)"
    (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error --save --save-exact "${missing[@]}")
  fi
}

# A Python with PyYAML: the system one if it has it, else the shared ops venv.
PY=python3
ensure_yaml() {
  if python3 -c 'import yaml' 2>/dev/null; then return; fi
  if [[ ! -x $VENV/bin/python ]]; then python3 -m venv "$VENV"; fi
  if ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    step "pip install pyyaml (in $VENV)"
    "$VENV/bin/python" -m pip install -q pyyaml
  fi
  PY=$VENV/bin/python
}

# --- checks ------------------------------------------------------------------------------

# Writes $2 (a .ts file) that assigns the dashboard JSON $1 to a `Dashboard`. JSON has no way
# to spell a TypeScript string enum member, so the few fields typed by one (threshold mode,
# colour mode, value-mapping type and special-value match) are passed through
# `en<Enum, "value">("value")`, which accepts only a value of that enum and yields its member:
# a wrong value still fails the check.
write_dashboard_ts() {
  "$PY" - "$1" "$2" <<'PY'
import json, sys

src, out = sys.argv[1], sys.argv[2]
with open(src) as f:
    dash = json.load(f)

ENUMS = {("thresholds", "mode"): "ThresholdsMode", ("color", "mode"): "FieldColorModeId",
         ("mappings[]", "type"): "MappingType", ("options", "match"): "SpecialValueMatch"}

def emit(v, parent=""):
    if isinstance(v, dict):
        items = []
        for k, x in v.items():
            enum = ENUMS.get((parent, k))
            if enum and isinstance(x, str):
                val = f"en<{enum}, {json.dumps(x)}>({json.dumps(x)})"
            else:
                val = emit(x, k)
            items.append(f"{json.dumps(k)}: {val}")
        return "{" + ", ".join(items) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(emit(x, parent + "[]" if parent == "mappings" else parent) for x in v) + "]"
    return json.dumps(v)

with open(out, "w") as f:
    f.write('import { Dashboard, FieldColorModeId, MappingType, SpecialValueMatch, ThresholdsMode } from "@grafana/schema";\n')
    f.write("type Member<E extends string, V extends string> = E extends unknown ? (`${E}` extends V ? E : never) : never;\n")
    f.write("const en = <E extends string, V extends `${E}`>(v: V): Member<E, V> => v as unknown as Member<E, V>;\n")
    f.write(f"const d: Dashboard = {emit(dash)};\n")
    f.write("export default d;\n")
PY
}

# Type-checks dashboard JSON $1 against @grafana/schema's Dashboard.
tsc_dashboard() {
  local name
  name=$(basename "$1" .json)
  write_dashboard_ts "$1" "$TS_DIR/$name.ts"
  "$NPM_DIR/node_modules/.bin/tsc" --noEmit --strict "$TS_DIR/$name.ts"
}

# Content check of dashboard JSON $1 (see the Python below).
check_dashboard() {
  "$PY" - "$1" <<'PY'
import json, re, sys

path = sys.argv[1]
# Every metric GMMAS exports (histograms with their _bucket/_sum/_count series) and `up`.
COUNTERS_GAUGES = """
messages_total outbox_published_total outbox_publish_failures_total outbox_pending
sweeper_actions_total objects_deleted_total http_rejected_total in_flight pseudo_labels_total
training_runs_total model_changes_total reports_total report_llm_attempts_total
consumer_pending_messages consumer_ack_pending_messages redeliveries_total model_info
model_promoted_timestamp_seconds cuda_memory_bytes stale_cases jetstream_storage_bytes
jetstream_storage_limit_bytes object_store_bytes
""".split()
HISTOGRAMS = "stage_duration_seconds inference_pass_seconds report_seconds".split()
ALLOWED = {"up"} | {"gmmas_" + m for m in COUNTERS_GAUGES}
ALLOWED |= {f"gmmas_{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan", "atan2"}

def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                      # range and subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)                    # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names

errors = []
def err(msg):
    errors.append(msg)

with open(path) as f:
    d = json.load(f)

if d.get("uid") != "gmmas-overview":
    err(f"uid is {d.get('uid')!r}, expected 'gmmas-overview'")
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    err("schemaVersion missing or older than 36")
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    err("templating needs a `datasource` variable of type datasource with query prometheus")
if "service" not in variables:
    err("templating needs a `service` variable")

panels = []
for p in d.get("panels", []):
    panels.append(p)
    panels.extend(p.get("panels", []) if p.get("type") == "row" else [])

ids = {}
for p in panels:
    where = f"panel {p.get('id')} {p.get('title')!r}"
    pid = p.get("id")
    if not isinstance(pid, int):
        err(f"{where}: id missing or not an integer")
    elif pid in ids:
        err(f"{where}: id {pid} also used by {ids[pid]!r}")
    else:
        ids[pid] = p.get("title")
    if not p.get("type"):
        err(f"{where}: no type")
    if not (isinstance(p.get("title"), str) and p["title"].strip()):
        err(f"{where}: no title")
    g = p.get("gridPos")
    if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
        err(f"{where}: gridPos needs integer x, y, w, h")
    elif g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24 or g["h"] < 1:
        err(f"{where}: gridPos {g} does not fit the 24-column grid")
    if p.get("type") == "row":
        continue
    if not (isinstance(p.get("description"), str) and p["description"].strip()):
        err(f"{where}: no description")
    if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
        err(f"{where}: no unit (fieldConfig.defaults.unit)")
    if p.get("type") == "timeseries":
        legend = p.get("options", {}).get("legend", {})
        if not legend.get("showLegend"):
            err(f"{where}: legend not shown")
    if p.get("datasource", {}).get("uid") != "${datasource}":
        err(f"{where}: datasource is not the ${{datasource}} variable")
    targets = p.get("targets")
    if not isinstance(targets, list) or not targets:
        err(f"{where}: no targets")
        continue
    for t in targets:
        expr = t.get("expr")
        if not (isinstance(expr, str) and expr.strip()):
            err(f"{where}: target {t.get('refId')} has no expr")
            continue
        if not t.get("legendFormat"):
            err(f"{where}: target {t.get('refId')} has no legendFormat")
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            err(f"{where}: target {t.get('refId')}: unbalanced brackets in {expr!r}")
        unknown = metric_names(expr) - ALLOWED
        if unknown:
            err(f"{where}: target {t.get('refId')} uses unknown metric(s) {sorted(unknown)}")
        if "gmmas_" in expr and '$service' not in expr and "up{" not in expr:
            err(f"{where}: target {t.get('refId')} ignores the $service variable")

if errors:
    print(f"{path}: {len(errors)} problem(s)")
    for e in errors:
        print("  -", e)
    sys.exit(1)
print(f"{path}: {len(panels)} panels OK")
PY
}

# Every alert of the rule file needs a test where it fires and one where it does not.
check_rule_test_coverage() {
  "$PY" - "$RULES" "$RULE_TESTS" <<'PY'
import sys, yaml

rules, tests = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
fires, quiet = set(), set()
for t in tests["tests"]:
    for case in t.get("alert_rule_test", []):
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
        for a in case.get("exp_alerts") or []:
            ann = a.get("exp_annotations", {})
            if not all(ann.get(k) for k in ("summary", "description", "runbook")):
                print(f"{case['alertname']}: a firing case lacks summary, description or runbook")
                sys.exit(1)
missing = [f"{a} (firing)" for a in alerts if a not in fires]
missing += [f"{a} (not firing)" for a in alerts if a not in quiet]
unknown = sorted((fires | quiet) - set(alerts))
if missing or unknown:
    print("untested:", ", ".join(missing) or "-", "| tests of unknown alerts:", ", ".join(unknown) or "-")
    sys.exit(1)
print(f"{len(alerts)} alerts, each with a firing and a non-firing test")
PY
}

# Runs "$@" expecting it to fail; a pass is an error of the check itself.
must_fail() {
  local what=$1
  shift
  if "$@" >"$WORK/negative.log" 2>&1; then
    cat "$WORK/negative.log"
    echo "NEGATIVE TEST PASSED UNEXPECTEDLY: $what"
    return 1
  fi
  echo "rejected as expected: $what ($(grep -m1 -iE 'error|problem|FAIL|unknown' "$WORK/negative.log" | cut -c1-150 || true))"
}

# --- run ---------------------------------------------------------------------------------

for f in "$RULES" "$RULE_TESTS" "$DASHBOARD"; do
  [[ -f $f ]] || die "missing $f"
done

ensure_promtool
ensure_npm
ensure_yaml
TS_DIR=$(mktemp -d "$NPM_DIR/.dashboard-check.XXXXXX") # under node_modules' parent, for imports
echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "tsc: $("$NPM_DIR/node_modules/.bin/tsc" --version), @grafana/schema $SCHEMA_VERSION"

step "promtool check rules"
promtool check rules "$RULES"

step "promtool test rules"
promtool test rules "$RULE_TESTS"

step "rule test coverage"
check_rule_test_coverage

step "dashboard: tsc --noEmit --strict against @grafana/schema Dashboard"
tsc_dashboard "$DASHBOARD"
echo "$DASHBOARD: type-checks as Dashboard"

step "dashboard: panels, queries and metric names"
check_dashboard "$DASHBOARD"

step "negative tests"
# A panel whose gridPos is text and whose type is missing must fail the type check, and a
# panel without targets must fail the content check.
"$PY" - "$DASHBOARD" "$WORK/broken-panel.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = next(p for p in d["panels"] if p.get("type") not in (None, "row"))
p["gridPos"]["w"] = str(p["gridPos"]["w"])
del p["type"]
p["targets"] = []
json.dump(d, open(sys.argv[2], "w"))
PY
# A threshold mode that is not one of the enum's values must fail the type check.
"$PY" - "$DASHBOARD" "$WORK/bad-enum.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = next(p for p in d["panels"] if p.get("type") not in (None, "row"))
p.setdefault("fieldConfig", {}).setdefault("defaults", {})["thresholds"] = {"mode": "absolut", "steps": []}
json.dump(d, open(sys.argv[2], "w"))
PY
# A panel that queries a metric GMMAS does not export must fail the content check.
"$PY" - "$DASHBOARD" "$WORK/unknown-metric.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = next(p for p in d["panels"] if p.get("type") not in (None, "row"))
p["targets"][0]["expr"] = 'sum(rate(gmmas_messages_totals{service=~"$service"}[$__rate_interval]))'
json.dump(d, open(sys.argv[2], "w"))
PY
# A rule file whose first expression does not parse must fail promtool; one whose error-rate
# threshold changed must fail the unit tests.
"$PY" - "$RULES" "$WORK/broken-rules.yaml" "$WORK/mutated-rules.yaml" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
broken = re.sub(r"^(\s+expr: [^|>\n].*)$", r"\1 +)", src, count=1, flags=re.M)
mutated = src.replace("stage:gmmas_messages_failed:ratio_rate15m > 0.10", "stage:gmmas_messages_failed:ratio_rate15m > 0.50")
if broken == src or mutated == src:
    sys.exit("could not make the broken or mutated rule files")
open(sys.argv[2], "w").write(broken)
open(sys.argv[3], "w").write(mutated)
PY
# Only the error-rate tests run against it (the whole file takes a while).
"$PY" - "$RULE_TESTS" "$WORK/mutated-rules.test.yaml" <<'PY'
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))
t["rule_files"] = ["mutated-rules.yaml"]
t["tests"] = [g for g in t["tests"]
              if any(c["alertname"] == "GmmasStageErrorRate" for c in g.get("alert_rule_test", []))]
if not t["tests"]:
    sys.exit("no GmmasStageErrorRate tests to run against the mutated rules")
yaml.safe_dump(t, open(sys.argv[2], "w"))
PY

neg_fail=0
must_fail "dashboard with a broken panel (tsc)" tsc_dashboard "$WORK/broken-panel.json" || neg_fail=1
must_fail "dashboard with a broken panel (content check)" check_dashboard "$WORK/broken-panel.json" || neg_fail=1
must_fail "dashboard with a misspelt threshold mode (tsc)" tsc_dashboard "$WORK/bad-enum.json" || neg_fail=1
must_fail "dashboard querying an unknown metric" check_dashboard "$WORK/unknown-metric.json" || neg_fail=1
must_fail "rules with a broken expression (promtool check rules)" promtool check rules "$WORK/broken-rules.yaml" || neg_fail=1
must_fail "rules with a changed threshold (promtool test rules)" promtool test rules "$WORK/mutated-rules.test.yaml" || neg_fail=1
((neg_fail == 0)) || die "a negative test passed: the checks above do not catch what they should"

step "all monitoring checks passed"
