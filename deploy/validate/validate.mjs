// Offline checks of deploy/: every manifest against the Kubernetes OpenAPI
// schemas (kubernetes-models' bundled validators), the conventions the
// README promises (lint), the flags the manifests pass against the
// binaries' --helpfull, and the Dockerfile against scripts/setup.
//
//   node validate.mjs <repo root> <quantizer_service> <inference_service>
// Prints one line per problem and exits 1 if there is any.
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import YAML from "yaml";

const [root, quantizerBinary, inferenceBinary] = process.argv.slice(2);
const k8sDir = path.join(root, "deploy/k8s");
const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

// --- Parse: the kustomization lists every other file, each parses.
const kustomization = YAML.parse(readFileSync(path.join(k8sDir, "kustomization.yaml"), "utf8"));
const files = readdirSync(k8sDir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
for (const f of files) {
  if (!kustomization.resources.includes(f)) problem(f, "not in kustomization.yaml's resources");
}
for (const f of kustomization.resources) {
  if (!files.includes(f)) problem("kustomization.yaml", `lists ${f}, which does not exist`);
}
const objects = [];
for (const f of files) {
  for (const doc of YAML.parseAllDocuments(readFileSync(path.join(k8sDir, f), "utf8"))) {
    if (doc.errors.length) problem(f, doc.errors.map(String).join("; "));
    const object = doc.toJS();
    if (object) objects.push({ file: f, object, where: `${f} ${object.kind}/${object.metadata?.name}` });
  }
}

// --- Schemas.
for (const { object, where } of objects) {
  const [group, version] = object.apiVersion.includes("/")
    ? object.apiVersion.split("/")
    : [null, object.apiVersion];
  const module = `kubernetes-models/${group ? `${group}/` : ""}${version}/${object.kind}`;
  try {
    const Model = (await import(module))[object.kind];
    new Model(object).validate();
  } catch (error) {
    problem(where, `schema: ${error.message}`);
  }
}

// --- Conventions.
const byKind = (kind) => objects.filter((o) => o.object.kind === kind);
const claims = new Set(byKind("PersistentVolumeClaim").map((o) => o.object.metadata.name));
const workloads = [...byKind("Deployment"), ...byKind("Job")];
const kUid = 10001;
const dockerfile = readFileSync(path.join(root, "deploy/Dockerfile"), "utf8");

const helpfull = {};
for (const [name, binary] of [["quantizer_service", quantizerBinary], ["inference_service", inferenceBinary]]) {
  let text = "";
  try {
    text = execFileSync(binary, ["--helpfull"], { encoding: "utf8" });
  } catch (error) {
    text = String(error.stdout ?? "");  // absl's --helpfull exits 1
  }
  helpfull[name] = new Set([...text.matchAll(/^\s+--([a-z0-9_]+) \(/gm)].map((m) => m[1]));
  if (helpfull[name].size < 10) problem(name, `--helpfull listed ${helpfull[name].size} flags`);
}

for (const { object, where } of workloads) {
  const pod = object.spec.template.spec;
  const sc = pod.securityContext ?? {};
  if (sc.runAsNonRoot !== true) problem(where, "pod securityContext.runAsNonRoot is not true");
  for (const field of ["runAsUser", "runAsGroup", "fsGroup"]) {
    if (sc[field] !== kUid) problem(where, `pod securityContext.${field} is not ${kUid}`);
  }
  if (sc.seccompProfile?.type !== "RuntimeDefault") problem(where, "seccompProfile is not RuntimeDefault");
  const volumes = Object.fromEntries((pod.volumes ?? []).map((v) => [v.name, v]));
  for (const v of Object.values(volumes)) {
    if (v.persistentVolumeClaim && !claims.has(v.persistentVolumeClaim.claimName)) {
      problem(where, `claim ${v.persistentVolumeClaim.claimName} is not defined`);
    }
  }
  let writesArtifacts = false;
  for (const c of pod.containers) {
    const at = `${where} container ${c.name}`;
    const csc = c.securityContext ?? {};
    if (csc.allowPrivilegeEscalation !== false) problem(at, "allowPrivilegeEscalation is not false");
    if (csc.readOnlyRootFilesystem !== true) problem(at, "readOnlyRootFilesystem is not true");
    if (!(csc.capabilities?.drop ?? []).includes("ALL")) problem(at, "capabilities do not drop ALL");
    for (const kind of ["requests", "limits"]) {
      for (const resource of ["cpu", "memory"]) {
        if (!c.resources?.[kind]?.[resource]) problem(at, `no ${kind}.${resource}`);
      }
    }
    const mounts = Object.fromEntries((c.volumeMounts ?? []).map((m) => [m.mountPath, m]));
    if (!volumes[mounts["/tmp"]?.name]?.emptyDir) problem(at, "/tmp is not an emptyDir (the root filesystem is read-only)");
    if (!mounts["/models"]?.readOnly) problem(at, "/models is not mounted read-only");
    const artifacts = mounts["/artifacts"];
    if (artifacts && !artifacts.readOnly) writesArtifacts = true;

    // Flags: each one the binary knows.
    const binary = path.basename(c.command?.[0] ?? "");
    if (!helpfull[binary]) {
      problem(at, `command ${c.command} is not a wq server binary`);
      continue;
    }
    const flags = (c.args ?? []).map((a) => a.match(/^--([a-z0-9_]+)/)?.[1]);
    flags.forEach((flag, i) => {
      if (!flag) problem(at, `argument ${c.args[i]} is not a --flag`);
      else if (!helpfull[binary].has(flag)) problem(at, `--${flag} is not a flag of ${binary}`);
    });
    // Listening beyond loopback needs TLS or an explicit --insecure where
    // the binary has those flags.
    const listensWide = (c.args ?? []).some((a) => /^--(http_)?listen=0\.0\.0\.0:/.test(a));
    if (listensWide && helpfull[binary].has("insecure") && !flags.includes("insecure") && !flags.includes("tls_cert")) {
      problem(at, "listens on 0.0.0.0 without --tls_cert or --insecure");
    }
    const grace = (c.args ?? []).map((a) => a.match(/^--shutdown_grace=(\d+)s$/)?.[1]).find(Boolean);
    if (object.kind === "Deployment") {
      for (const probe of ["readinessProbe", "livenessProbe"]) {
        if (!c[probe]?.grpc?.port) problem(at, `no gRPC ${probe}`);
      }
      if (!grace) problem(at, "no --shutdown_grace=<N>s");
      const preStop = Number(c.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
      const period = pod.terminationGracePeriodSeconds ?? 30;
      if (grace && period < preStop + Number(grace) + 3) {
        problem(at, `terminationGracePeriodSeconds ${period} < preStop ${preStop}s + --shutdown_grace ${grace}s + 3s`);
      }
      const annotations = object.spec.template.metadata.annotations ?? {};
      const httpPort = (c.ports ?? []).find((p) => p.name === "http")?.containerPort;
      if (annotations["prometheus.io/scrape"] !== "true" || Number(annotations["prometheus.io/port"]) !== httpPort ||
          annotations["prometheus.io/path"] !== "/metrics") {
        problem(at, "no Prometheus scrape annotations for the http port's /metrics");
      }
    }
    if (object.kind === "Job" && !flags.includes("once")) problem(at, "a Job runs quantizer_service --once");
  }
  if (object.kind === "Deployment" && writesArtifacts && object.spec.strategy?.type !== "Recreate") {
    problem(where, "writes the artifact root but its strategy is not Recreate");
  }
  if (object.kind === "Job") {
    if (object.spec.backoffLimit === undefined) problem(where, "no backoffLimit");
    if (pod.restartPolicy !== "Never") problem(where, "restartPolicy is not Never");
  }
}
const deployments = new Set(byKind("Deployment").map((o) => o.object.metadata.name));
for (const { object, where } of byKind("HorizontalPodAutoscaler")) {
  if (!deployments.has(object.spec.scaleTargetRef.name)) problem(where, "scales a Deployment that is not defined");
}
const writers = byKind("Deployment").filter((o) =>
  o.object.spec.template.spec.containers.some((c) => (c.volumeMounts ?? []).some((m) => m.mountPath === "/artifacts" && !m.readOnly)));
for (const { object, where } of writers) {
  if (object.spec.replicas !== 1) problem(where, "writes the artifact root with more than one replica");
}

// --- Dockerfile.
const stages = [...dockerfile.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
if (stages.length < 2) problem("Dockerfile", "not multi-stage");
for (const image of stages) {
  if (!/^debian:bookworm-\d{8}(-slim)?$/.test(image) && !image.includes("@sha256:")) {
    problem("Dockerfile", `base ${image} is not pinned (dated tag or digest)`);
  }
}
if (!dockerfile.includes(`USER ${kUid}:${kUid}`)) problem("Dockerfile", `does not run as ${kUid}:${kUid}`);
if (!/^ENTRYPOINT \[/m.test(dockerfile)) problem("Dockerfile", "no exec-form ENTRYPOINT");
for (const { object } of workloads) {
  for (const c of object.spec.template.spec.containers) {
    if (!dockerfile.includes(`COPY --from=build /out/ ${path.dirname(c.command[0])}/`)) {
      problem("Dockerfile", `does not install the binaries where ${c.command[0]} expects them`);
    }
  }
}
// Runtime packages: each must be what scripts/setup's packages install,
// directly or as a dependency of one (the -dev packages depend on them).
const lastStage = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
const lines = lastStage.split("\n");
const first = lines.findIndex((l) => l.includes("--no-install-recommends"));
const runtime = [];
for (let i = first + 1; first >= 0 && i < lines.length && !/^\s*&&/.test(lines[i]); ++i) {
  runtime.push(...lines[i].replace(/\\$/, "").split(/\s+/).filter(Boolean));
}
if (runtime.length === 0) problem("Dockerfile", "no runtime package list found");
const setup = readFileSync(path.join(root, "scripts/setup"), "utf8");
const setupPackages = setup.match(/^PACKAGES=\(([\s\S]*?)^\)/m)[1]
  .split("\n").map((l) => l.replace(/#.*/, "")).join(" ").split(/\s+/).filter(Boolean);
const depends = (p) => {
  try {
    return execFileSync("dpkg-query", ["-W", "-f=${Depends}", p], { encoding: "utf8" })
      .split(",").map((d) => d.trim().split(/[\s:]/)[0]).filter(Boolean);
  } catch {
    return [];
  }
};
const closure = new Set(setupPackages);
let frontier = [...setupPackages];
for (let depth = 0; depth < 3; ++depth) {
  frontier = frontier.flatMap(depends).filter((d) => !closure.has(d));
  frontier.forEach((d) => closure.add(d));
}
for (const p of runtime) {
  if (!closure.has(p)) problem("Dockerfile", `runtime package ${p} is not installed by scripts/setup's packages`);
}

for (const line of problems) console.log(line);
console.log(`${objects.length} objects in ${files.length} files, ${runtime.length} runtime packages: ` +
            `${problems.length} problem(s)`);
process.exit(problems.length ? 1 : 0);
