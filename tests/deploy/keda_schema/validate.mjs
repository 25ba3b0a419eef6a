// Validates the ScaledObjects given as a JSON array on stdin with KEDA's CRD schema (compiled
// by @kubernetes-models/keda): required fields, types, enums, patterns. Prints one line per
// problem and exits 1 if there is any. Unknown fields are the TypeScript check's job.
import fs from "fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";

let failed = false;
for (const doc of JSON.parse(fs.readFileSync(0, "utf8"))) {
  try {
    new ScaledObject(doc).validate();
  } catch (err) {
    console.log(`${doc.metadata?.name}: ${err.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
