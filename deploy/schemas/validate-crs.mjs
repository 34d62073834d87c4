// Validate custom resources against the schemas generated from their CRDs (README.md here).
// stdin: a JSON array of resources; stdout: a JSON array of {ok, error} in the same order.
// A resource whose apiVersion/kind has no schema here is reported as an error, never passed.
import { readFileSync } from "node:fs";

const PACKAGES = {
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
  "keda.sh": "@kubernetes-models/keda",
};

async function validate(resource) {
  const [group, version] = String(resource.apiVersion ?? "").split("/");
  const pkg = PACKAGES[group];
  if (!pkg || !version) {
    return { ok: false, error: `no schema for ${resource.apiVersion} ${resource.kind}` };
  }
  let model;
  try {
    model = await import(`${pkg}/${group}/${version}/${resource.kind}`);
  } catch {
    return { ok: false, error: `no schema for ${resource.apiVersion} ${resource.kind}` };
  }
  const Model = model[resource.kind];
  try {
    new Model(resource).validate();
    return { ok: true };
  } catch (err) {
    return { ok: false, error: String(err.message ?? err) };
  }
}

const resources = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const resource of resources) results.push(await validate(resource));
process.stdout.write(JSON.stringify(results));
