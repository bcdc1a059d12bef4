#!/usr/bin/env node
// Validates coalmine's Kubernetes and Istio manifests, offline.
//
//   npm ci --prefix tools/manifests && node tools/manifests/validate.mjs [dir|file ...]
//
// With no arguments: every *.yaml under deploy/istio and deploy/kubernetes.
// Each document is checked against the schema of its apiVersion and kind
// (Kubernetes' OpenAPI from kubernetes-models, Istio's CRDs from
// @kubernetes-models/istio), then for fields the schema does not declare,
// then against coalmine's own invariants across the files. Errors read
//   <file>: <kind>/<name>: <path>: <message>
// and make the exit status 1.
//
// Why the unknown-field check is ours: Istio's CRD schemas, like most, leave
// additionalProperties unset, so a misspelt field validates, and the API
// server then drops it without a word (a `failStategy: FAIL_OPEN` would
// silently leave the plugin failing closed). The published models carry their
// schemas compiled into validation functions, not as data, so the check
// watches the compiled validator instead: it visits every property its schema
// declares, for objects with declared properties, and enumerates the keys of
// maps (additionalProperties). A key it never looked at is one the schema
// does not have.

import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

// The packages come from `npm ci` in this directory; say so rather than
// report every manifest as unknown when they are missing.
let parseAllDocuments, parseYaml;
try {
  ({ parseAllDocuments, parse: parseYaml } = await import("yaml"));
  await import("kubernetes-models/v1/Namespace");
  await import("@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin");
} catch (e) {
  console.error(`manifests: the validator's packages are missing (${e.code ?? e.message}): npm ci --prefix tools/manifests`);
  process.exit(1);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const DEFAULT_DIRS = ["deploy/istio", "deploy/kubernetes"];
const KUSTOMIZATION = new Set(["kustomization.yaml", "kustomization.yml", "Kustomization"]);
const DEFAULT_CLUSTER_HEADER = "x-coalmine-cluster";

const errors = [];

// What a value is, when its shape is not guaranteed.
const list = (x) => (Array.isArray(x) ? x : []);
const map = (x) => (x !== null && typeof x === "object" && !Array.isArray(x) ? x : {});

function display(file) {
  const rel = path.relative(root, file);
  return rel.startsWith("..") || path.isAbsolute(rel) ? file : rel;
}

function fail(file, resource, where, message) {
  const who = resource ? `${resource.kind ?? "?"}/${resource.metadata?.name ?? "?"}` : "-";
  errors.push(`${display(file)}: ${who}: ${where || "(document)"}: ${message}`);
}

// ---- paths -----------------------------------------------------------------

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

function join(parent, key) {
  if (typeof key === "number") return `${parent}[${key}]`;
  if (IDENT.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key)}]`;
}

// A JSON pointer (ajv's instancePath) as the path notation above.
function fromPointer(pointer) {
  if (!pointer) return "";
  return pointer
    .split("/")
    .slice(1)
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce((p, s) => join(p, /^(0|[1-9][0-9]*)$/.test(s) ? Number(s) : s), "");
}

// ---- files -----------------------------------------------------------------

function yamlFilesUnder(target) {
  const st = statSync(target);
  if (st.isFile()) return [target];
  return readdirSync(target)
    .filter((n) => n.endsWith(".yaml") || n.endsWith(".yml"))
    .sort()
    .map((n) => path.join(target, n))
    .filter((f) => statSync(f).isFile());
}

// Kubernetes reads manifests as YAML 1.1 (`yes` and `on` are booleans there,
// 0700 is octal) and refuses duplicate keys: so does this. Its parser has no
// base-60 numbers and keeps timestamps as strings, so those 1.1 tags are left
// out.
const YAML_OPTIONS = {
  version: "1.1",
  uniqueKeys: true,
  prettyErrors: true,
  customTags: (tags) => tags.filter((t) => t.tag !== "tag:yaml.org,2002:timestamp" && t.format !== "TIME"),
};

function readDocuments(file) {
  const text = readFileSync(file, "utf8");
  const docs = [];
  for (const doc of parseAllDocuments(text, YAML_OPTIONS)) {
    for (const e of doc.errors) {
      const line = e.linePos?.[0]?.line;
      const message = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
      fail(file, null, line ? `line ${line}` : "", `YAML: ${message}`);
    }
    if (doc.errors.length) continue;
    const value = doc.toJS();
    if (value === null || value === undefined) continue;
    docs.push(value);
  }
  return docs;
}

// A kustomization is no resource; what it lists must exist.
function checkKustomization(file) {
  let k;
  try {
    k = parseYaml(readFileSync(file, "utf8"), YAML_OPTIONS);
  } catch (e) {
    fail(file, null, e.linePos?.[0]?.line ? `line ${e.linePos[0].line}` : "",
      `YAML: ${e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "")}`);
    return;
  }
  const who = { kind: "Kustomization", metadata: { name: path.basename(path.dirname(file)) } };
  const refs = [];
  for (const [i, r] of list(map(k).resources).entries()) refs.push([join("resources", i), r]);
  for (const [i, r] of list(map(k).components).entries()) refs.push([join("components", i), r]);
  for (const [i, p] of list(map(k).patches).entries()) {
    if (p?.path) refs.push([join(join("patches", i), "path"), p.path]);
  }
  for (const [where, ref] of refs) {
    if (typeof ref !== "string") {
      fail(file, who, where, "must be a path");
      continue;
    }
    if (/^[a-z]+:\/\//.test(ref) || ref.includes("?ref=")) continue;
    const target = path.resolve(path.dirname(file), ref);
    if (!existsSync(target)) {
      fail(file, who, where, `${ref} does not exist`);
    } else if (statSync(target).isDirectory() && ![...KUSTOMIZATION].some((n) => existsSync(path.join(target, n)))) {
      fail(file, who, where, `${ref} is a directory without a kustomization`);
    }
  }
}

// ---- models ----------------------------------------------------------------

const VERSION = /^v[0-9]+(?:(?:alpha|beta)[0-9]+)?$/;
const GROUP = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;
const KIND = /^[A-Z][A-Za-z0-9]*$/;

async function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !KIND.test(kind)) return null;
  const parts = apiVersion.split("/");
  const [group, version] = parts.length === 1 ? ["", parts[0]] : parts;
  if (parts.length > 2 || !VERSION.test(version) || (group && !GROUP.test(group))) return null;
  const spec = !group
    ? `kubernetes-models/${version}/${kind}`
    : group.endsWith(".istio.io")
      ? `@kubernetes-models/istio/${group}/${version}/${kind}`
      : `kubernetes-models/${group}/${version}/${kind}`;
  let mod;
  try {
    mod = await import(spec);
  } catch {
    return null;
  }
  const model = mod[kind];
  return model && model.apiVersion === apiVersion && model.kind === kind ? model : null;
}

// Wraps `value` so that every property read, every `in` test and every key
// enumeration on it or anything under it is recorded.
function watch(value) {
  const records = [];
  const proxies = new WeakMap();
  const wrap = (target, where) => {
    if (target === null || typeof target !== "object") return target;
    const known = proxies.get(target);
    if (known) return known;
    const rec = { where, target, looked: new Set(), enumerated: false };
    records.push(rec);
    const array = Array.isArray(target);
    const proxy = new Proxy(target, {
      get(t, key, receiver) {
        const v = Reflect.get(t, key, receiver);
        if (typeof key !== "string") return v;
        rec.looked.add(key);
        if (!Object.hasOwn(t, key)) return v;
        return wrap(v, join(where, array && /^[0-9]+$/.test(key) ? Number(key) : key));
      },
      has(t, key) {
        if (typeof key === "string") rec.looked.add(key);
        return Reflect.has(t, key);
      },
      getOwnPropertyDescriptor(t, key) {
        if (typeof key === "string") rec.looked.add(key);
        return Reflect.getOwnPropertyDescriptor(t, key);
      },
      ownKeys(t) {
        rec.enumerated = true;
        return Reflect.ownKeys(t);
      },
    });
    proxies.set(target, proxy);
    return proxy;
  };
  return { proxy: wrap(value, ""), records };
}

function describe(err) {
  const { keyword, params = {}, message = "is invalid" } = err;
  if (keyword === "enum") return `${message}: ${params.allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
  if (keyword === "additionalProperties") return `unknown field ${JSON.stringify(params.additionalProperty)}`;
  if (keyword === "required") return `missing required field ${JSON.stringify(params.missingProperty)}`;
  return message;
}

async function validateResource(file, doc) {
  if (typeof doc !== "object" || Array.isArray(doc)) {
    fail(file, null, "", "a manifest must be a mapping");
    return null;
  }
  const model = await modelFor(doc.apiVersion, doc.kind);
  if (!model) {
    fail(file, doc, "", `unknown apiVersion/kind ${JSON.stringify(doc.apiVersion)}/${JSON.stringify(doc.kind)}`);
    return null;
  }
  const before = errors.length;
  if (typeof doc.metadata?.name !== "string" || !doc.metadata.name) {
    fail(file, doc, "metadata.name", "missing: every resource needs a name");
  }
  const instance = new model(doc);
  const { proxy, records } = watch(instance);
  const seen = new Set();
  try {
    model.prototype.validate.call(proxy);
  } catch (e) {
    if (!Array.isArray(e.errors)) {
      fail(file, doc, "", `the schema check failed: ${e.message}`);
      return { clean: false };
    }
    for (const err of e.errors) {
      const line = `${fromPointer(err.instancePath)}\0${describe(err)}`;
      if (seen.has(line)) continue;
      seen.add(line);
      const [where, message] = line.split("\0");
      fail(file, doc, where, message);
    }
  }
  for (const rec of records) {
    // Arrays, maps the validator enumerated, and objects whose schema
    // declares no properties (free-form, like a WasmPlugin's pluginConfig)
    // have no unknown keys to find.
    if (Array.isArray(rec.target) || rec.enumerated || rec.looked.size === 0) continue;
    for (const key of Object.keys(rec.target)) {
      if (!rec.looked.has(key)) fail(file, doc, join(rec.where, key), "unknown field (not in the schema)");
    }
  }
  return { clean: errors.length === before };
}

// ---- coalmine's invariants -------------------------------------------------
//
// Checked on the resources that passed their schema (the others already have
// errors to fix), looking things up among all of them.

function namespaceOf(r) {
  return r.doc.metadata?.namespace ?? "default";
}

// A Kubernetes service host as its FQDN (the short forms resolve in the
// namespace of the resource naming them).
function fqdn(host, namespace) {
  if (typeof host !== "string") return "";
  if (host.includes(".svc.")) return host;
  const [name, ns = namespace] = host.split(".");
  return `${name}.${ns}.svc.cluster.local`;
}

function crossChecks(resources) {
  const all = (kind) => resources.filter((r) => r.doc.kind === kind);
  const checked = (kind) => all(kind).filter((r) => r.clean);
  const findIn = (kind, name, ns) =>
    all(kind).find((r) => r.doc.metadata?.name === name && namespaceOf(r) === ns);
  const plugins = all("WasmPlugin");

  // The header the filter names the version's subset in, and the paths its
  // deployments match.
  const configs = plugins.map((p) => map(p.doc.spec?.pluginConfig));
  const clusterHeaders = new Set(configs.map((c) => map(c.headers).cluster ?? DEFAULT_CLUSTER_HEADER));
  if (!clusterHeaders.size) clusterHeaders.add(DEFAULT_CLUSTER_HEADER);
  const prefixes = new Set(configs.flatMap((c) => list(c.deployments).map((d) => map(map(d).match).path_prefix)));

  // Routes on the filter's header go to the subset the header names (a
  // version's registered cluster is its subset's name), and every subset a
  // route names is defined for its host.
  for (const vs of checked("VirtualService")) {
    const ns = namespaceOf(vs);
    for (const [i, route] of list(vs.doc.spec?.http).entries()) {
      const where = join(join("spec", "http"), i);
      const named = new Set();
      for (const [j, m] of list(route.match).entries()) {
        const at = join(join(where, "match"), j);
        for (const [header, match] of Object.entries(map(m.headers))) {
          if (header.startsWith("x-coalmine-") && !clusterHeaders.has(header)) {
            fail(vs.file, vs.doc, join(at, "headers"),
              `routes on ${header}, but the filter names the version's subset in ${[...clusterHeaders].join(", ")}`);
          }
          if (!clusterHeaders.has(header)) continue;
          if (typeof match?.exact !== "string") {
            fail(vs.file, vs.doc, join(join(at, "headers"), header), "match the filter's header with exact: <subset name>");
            continue;
          }
          named.add(match.exact);
          const prefix = m.uri?.prefix;
          if (plugins.length && prefix !== undefined && !prefixes.has(prefix)) {
            fail(vs.file, vs.doc, join(at, "uri"), `prefix ${prefix} is no deployment's match.path_prefix in the WasmPlugin`);
          }
        }
      }
      if (named.size > 1) {
        fail(vs.file, vs.doc, where, `one route matches several subsets in the filter's header: ${[...named].join(", ")}`);
      }
      for (const [k, dest] of list(route.route).entries()) {
        const at = join(join(join(where, "route"), k), "destination");
        const { subset, host } = map(dest?.destination);
        if (named.size === 1 && subset !== [...named][0]) {
          fail(vs.file, vs.doc, join(at, "subset"),
            `the filter's header names ${[...named][0]}, but the route goes to ${subset ?? "no subset"}: ` +
            "register each version with its subset's name as its cluster and route to that subset");
        }
        if (subset && host) {
          const full = fqdn(host, ns);
          const defined = all("DestinationRule").some((dr) =>
            fqdn(dr.doc.spec?.host, namespaceOf(dr)) === full &&
            list(dr.doc.spec?.subsets).some((x) => x?.name === subset));
          if (!defined) fail(vs.file, vs.doc, join(at, "subset"), `no DestinationRule defines subset ${subset} for ${full}`);
        }
      }
    }
  }

  // The filter syncs through the sidecar's cluster for the controller's
  // Service: outbound|<port>||<service>.<namespace>.svc.cluster.local.
  for (const p of checked("WasmPlugin")) {
    const c = map(p.doc.spec?.pluginConfig).controller;
    if (!c) continue;
    const where = "spec.pluginConfig.controller";
    const m = /^outbound\|([0-9]+)\|\|([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local$/.exec(String(c.cluster));
    if (!m) {
      fail(p.file, p.doc, join(where, "cluster"),
        `${JSON.stringify(c.cluster)} is not an Istio service cluster name (outbound|<port>||<service>.<namespace>.svc.cluster.local)`);
      continue;
    }
    const [, port, name, ns] = m;
    const svc = findIn("Service", name, ns);
    const sp = svc && list(svc.doc.spec?.ports).find((x) => String(x?.port) === port);
    if (!svc) {
      fail(p.file, p.doc, join(where, "cluster"), `no Service ${ns}/${name} among the manifests`);
    } else if (!sp) {
      fail(p.file, p.doc, join(where, "cluster"), `Service ${ns}/${name} has no port ${port}`);
    } else if (!(sp.appProtocol === "http" || sp.name === "http" || String(sp.name ?? "").startsWith("http-"))) {
      fail(svc.file, svc.doc, "spec.ports",
        `port ${port} must be named http (or http-*) so that Istio handles the filter's sync calls as HTTP`);
    }
    if (c.authority !== undefined && c.authority !== `${name}.${ns}.svc.cluster.local`) {
      fail(p.file, p.doc, join(where, "authority"), `expected ${name}.${ns}.svc.cluster.local, the host of ${c.cluster}`);
    }
  }

  // What a Deployment refers to in its namespace is among the manifests.
  for (const d of checked("Deployment")) {
    const ns = namespaceOf(d);
    const pod = map(d.doc.spec?.template?.spec);
    const base = "spec.template.spec";
    for (const [i, c] of list(pod.containers).entries()) {
      for (const [j, e] of list(c?.env).entries()) {
        const ref = e?.valueFrom?.secretKeyRef;
        if (!ref || ref.optional) continue;
        const secret = findIn("Secret", ref.name, ns);
        const keys = secret ? Object.keys({ ...map(secret.doc.data), ...map(secret.doc.stringData) }) : [];
        if (!keys.includes(ref.key)) {
          fail(d.file, d.doc, `${base}.containers[${i}].env[${j}].valueFrom.secretKeyRef`,
            `no Secret ${ns}/${ref.name} with key ${ref.key} among the manifests`);
        }
      }
    }
    for (const [i, v] of list(pod.volumes).entries()) {
      const claim = v?.persistentVolumeClaim?.claimName;
      if (claim && !findIn("PersistentVolumeClaim", claim, ns)) {
        fail(d.file, d.doc, `${base}.volumes[${i}]`, `no PersistentVolumeClaim ${ns}/${claim} among the manifests`);
      }
    }
    if (pod.serviceAccountName && !findIn("ServiceAccount", pod.serviceAccountName, ns)) {
      fail(d.file, d.doc, `${base}.serviceAccountName`, `no ServiceAccount ${ns}/${pod.serviceAccountName} among the manifests`);
    }
  }

  // The sidecars' stats_tags are the local stack's, so that the same scrape
  // config and dashboard serve both. (envoy/envoy.yaml itself is checked by
  // `envoy --mode validate`; if it does not parse, there is nothing to
  // compare with.)
  let envoyTags;
  try {
    envoyTags = parseYaml(readFileSync(path.join(root, "envoy", "envoy.yaml"), "utf8"))?.stats_config?.stats_tags;
  } catch {
    envoyTags = undefined;
  }
  for (const cm of checked("ConfigMap")) {
    const text = map(cm.doc.data)["custom_bootstrap.json"];
    if (text === undefined) continue;
    const where = 'data["custom_bootstrap.json"]';
    let tags;
    try {
      tags = JSON.parse(text)?.stats_config?.stats_tags;
    } catch (e) {
      fail(cm.file, cm.doc, where, `not JSON: ${e.message}`);
      continue;
    }
    if (envoyTags && JSON.stringify(tags) !== JSON.stringify(envoyTags)) {
      fail(cm.file, cm.doc, where, "stats_config.stats_tags differ from envoy/envoy.yaml's");
    }
  }
}

// ---- main ------------------------------------------------------------------

const targets = process.argv.length > 2
  ? process.argv.slice(2).map((a) => path.resolve(a))
  : DEFAULT_DIRS.map((d) => path.join(root, d));

const resources = [];
let files = 0;
for (const target of targets) {
  if (!existsSync(target)) {
    fail(target, null, "", "does not exist");
    continue;
  }
  for (const file of yamlFilesUnder(target)) {
    if (KUSTOMIZATION.has(path.basename(file))) {
      checkKustomization(file);
      continue;
    }
    files += 1;
    for (const doc of readDocuments(file)) {
      const checked = await validateResource(file, doc);
      if (checked) resources.push({ file, doc, clean: checked.clean });
    }
  }
}
crossChecks(resources);

if (errors.length) {
  for (const e of errors) console.error(e);
  console.error(`manifests: ${errors.length} error(s)`);
  process.exit(1);
}
console.log(`manifests: ${resources.length} resources in ${files} files ok`);
