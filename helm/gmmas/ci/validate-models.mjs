// Validates rendered Kubernetes objects with the kubernetes-models package: each object is
// built as the model class of its apiVersion and kind, and `.validate()` checks it against
// the OpenAPI schema (required fields, types, formats such as resource quantities).
//
//   node validate-models.mjs NPM_DIR OBJECTS.json
//
// NPM_DIR holds node_modules/kubernetes-models. OBJECTS.json is a list of
// {"case", "source", "expect": "valid" | "invalid", "object"}. Kinds of custom resources
// (ServiceMonitor, PrometheusRule, ScaledObject) have no model here and are skipped by name;
// any other kind without a model is an error. Exit status 1 when an object expected valid
// fails, or one expected invalid passes (the validator's own self-test).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const SKIPPED = new Set([
  "monitoring.coreos.com/v1/ServiceMonitor",
  "monitoring.coreos.com/v1/PrometheusRule",
  "keda.sh/v1alpha1/ScaledObject",
]);

const [npmDir, objectsFile] = process.argv.slice(2);
if (!npmDir || !objectsFile) {
  console.error("usage: node validate-models.mjs NPM_DIR OBJECTS.json");
  process.exit(2);
}
const modelsRoot = join(npmDir, "node_modules", "kubernetes-models");
const models = new Map();

// The model class of apiVersion/kind: kubernetes-models/<group>/<version>/<Kind>.js
// (core objects: kubernetes-models/v1/<Kind>.js).
async function modelFor(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!models.has(key)) {
    const file = join(modelsRoot, ...apiVersion.split("/"), `${kind}.js`);
    const load = existsSync(file)
      ? import(pathToFileURL(file).href).then((m) => m[kind] ?? null)
      : Promise.resolve(null);
    models.set(key, load);
  }
  return models.get(key);
}

const items = JSON.parse(readFileSync(objectsFile, "utf8"));
let checked = 0;
let skipped = 0;
let selfTests = 0;
const problems = [];

for (const item of items) {
  const obj = item.object;
  const key = `${obj.apiVersion}/${obj.kind}`;
  const label = `${item.case}: ${item.source}: ${obj.kind}/${obj.metadata?.name ?? "?"}`;
  if (SKIPPED.has(key)) {
    skipped += 1;
    continue;
  }
  const Model = await modelFor(obj.apiVersion, obj.kind);
  if (!Model) {
    problems.push(`${label}: no kubernetes-models class for ${key}`);
    continue;
  }
  let error = null;
  try {
    new Model(obj).validate();
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  }
  if (item.expect === "invalid") {
    selfTests += 1;
    if (error === null) problems.push(`${label}: accepted, but it must be refused`);
    else console.log(`refused as expected: ${label}: ${error.split(", ")[0]}`);
  } else {
    checked += 1;
    if (error !== null) problems.push(`${label}: ${error}`);
  }
}

for (const p of problems) console.error(`PROBLEM ${p}`);
console.log(
  `kubernetes-models: ${checked} objects valid, ${skipped} custom resources skipped ` +
    `(ServiceMonitor, PrometheusRule, ScaledObject), ${selfTests} self-test(s), ${problems.length} problem(s)`,
);
process.exit(problems.length === 0 ? 0 : 1);
