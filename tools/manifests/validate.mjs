#!/usr/bin/env node
// Validates coalmine's Kubernetes and Istio manifests, offline.
//
//   npm ci --prefix tools/manifests && node tools/manifests/validate.mjs [dir|file ...]
//
// With no arguments: every *.yaml under deploy/istio and deploy/kubernetes,
// and what the overlay deploy/kubernetes-ha renders to (below: overlays).
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

import { spawnSync } from "node:child_process";
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
const DEFAULT_DIRS = ["deploy/istio", "deploy/kubernetes", "deploy/kubernetes-ha"];
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

// ---- overlays --------------------------------------------------------------
//
// A directory whose kustomization builds on another directory (a base) or
// patches what it lists is an overlay. Its files are not manifests on their
// own (a patch is a partial resource), so what is checked is what `kubectl
// apply -k` would apply: the overlay rendered, beside the files around it
// that no kustomization lists (the Secret examples). The rendering here is
// the small part of kustomize these overlays use: resources (files and
// bases), and patches by path merged the strategic way (containers, env,
// volumes and volume mounts by their keys, other lists replaced, `$patch:
// delete` for a list item or a whole resource, null to delete a field).
// Anything else is an error rather than a guess. Where kubectl is installed,
// the rendering is compared with `kubectl kustomize`.

const KUSTOMIZATION_FIELDS = new Set(["apiVersion", "kind", "resources", "patches"]);
// The lists a strategic merge patch merges by key, and the key.
const MERGE_KEYS = { containers: "name", initContainers: "name", env: "name", volumes: "name", volumeMounts: "mountPath" };
// Lists the API merges by a key this rendering does not know: a patch that
// sets one is refused rather than rendered as a replacement.
const UNRENDERED_LISTS = new Set([
  "ports", "imagePullSecrets", "topologySpreadConstraints", "hostAliases",
  "volumeDevices", "ephemeralContainers", "resourceClaims", "schedulingGates",
]);

function kustomizationIn(dir) {
  for (const n of KUSTOMIZATION) {
    const f = path.join(dir, n);
    if (existsSync(f)) return f;
  }
  return null;
}

function isDirectory(p) {
  return existsSync(p) && statSync(p).isDirectory();
}

function isOverlay(dir) {
  const file = isDirectory(dir) ? kustomizationIn(dir) : null;
  if (!file) return false;
  let k;
  try {
    k = map(parseYaml(readFileSync(file, "utf8"), YAML_OPTIONS));
  } catch {
    return false;
  }
  return list(k.patches).length > 0 ||
    list(k.resources).some((r) => typeof r === "string" && isDirectory(path.resolve(dir, r)));
}

const isMap = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
const clone = (x) => structuredClone(x);

function sameResource(a, b) {
  return a.apiVersion === b.apiVersion && a.kind === b.kind &&
    a.metadata?.name === b.metadata?.name && a.metadata?.namespace === b.metadata?.namespace;
}

// A strategic merge of `patch` into `dest` (neither is changed).
function mergePatch(dest, patch, at) {
  const { file, resource } = at;
  if (!isMap(patch)) return clone(patch);
  const out = isMap(dest) ? { ...dest } : {};
  if (patch.$patch !== undefined) {
    fail(file, resource, join(at.where, "$patch"), `$patch: ${patch.$patch} is not rendered here`);
  }
  for (const [key, value] of Object.entries(patch)) {
    if (key === "$patch") continue;
    const where = join(at.where, key);
    if (key.startsWith("$")) {
      fail(file, resource, where, "this directive is not rendered here");
    } else if (value === null) {
      delete out[key];
    } else if (Array.isArray(value) && Object.hasOwn(MERGE_KEYS, key)) {
      out[key] = mergeList(out[key], value, MERGE_KEYS[key], { file, resource, where });
    } else if (Array.isArray(value) && UNRENDERED_LISTS.has(key)) {
      fail(file, resource, where, "the API merges this list by a key this validator does not render");
    } else if (Array.isArray(value)) {
      if (value.some((v) => isMap(v) && "$patch" in v)) {
        fail(file, resource, where, "$patch in a list that is replaced, not merged");
      }
      out[key] = clone(value);
    } else if (isMap(value)) {
      out[key] = mergePatch(out[key], value, { file, resource, where });
    } else {
      out[key] = value;
    }
  }
  return out;
}

// Items the patch names first, in its order (merged into the item of the
// same key, if any, or added), then the others: how kustomize orders them.
function mergeList(dest, patch, key, at) {
  const old = list(dest);
  const taken = new Set();
  const out = [];
  for (const [i, item] of patch.entries()) {
    const where = join(at.where, i);
    if (!isMap(item) || item[key] === undefined) {
      fail(at.file, at.resource, where, `a patch's item here needs its ${key}`);
      continue;
    }
    const j = old.findIndex((o) => isMap(o) && o[key] === item[key]);
    if (j >= 0) taken.add(j);
    if (item.$patch === "delete") {
      if (j < 0) fail(at.file, at.resource, where, `deletes ${key} ${item[key]}, which is not there`);
      continue;
    }
    out.push(mergePatch(j >= 0 ? old[j] : {}, item, { ...at, where }));
  }
  old.forEach((o, j) => {
    if (!taken.has(j)) out.push(o);
  });
  return out;
}

// The overlay's resources as kustomize builds them, the files it read and
// the directories it went through; null when it cannot be rendered.
function render(dir, visited = []) {
  const file = kustomizationIn(dir);
  const who = { kind: "Kustomization", metadata: { name: path.basename(dir) } };
  if (!file) {
    fail(dir, who, "", "no kustomization to render");
    return null;
  }
  if (visited.includes(dir)) {
    fail(file, who, "resources", "includes itself");
    return null;
  }
  let k;
  try {
    k = map(parseYaml(readFileSync(file, "utf8"), YAML_OPTIONS));
  } catch {
    return null; // checkKustomization reports it
  }
  for (const key of Object.keys(k)) {
    if (!KUSTOMIZATION_FIELDS.has(key)) {
      fail(file, who, key, "not rendered by this validator: use resources and patches by path");
    }
  }
  const out = { docs: [], files: new Set([file]), dirs: new Set([dir]) };
  for (const ref of list(k.resources)) {
    if (typeof ref !== "string") continue; // checkKustomization reports it
    const target = path.resolve(dir, ref);
    if (!existsSync(target)) continue; // so does it
    if (statSync(target).isDirectory()) {
      const base = render(target, [...visited, dir]);
      if (!base) return null;
      out.docs.push(...base.docs);
      base.files.forEach((f) => out.files.add(f));
      base.dirs.forEach((d) => out.dirs.add(d));
    } else {
      out.files.add(target);
      out.docs.push(...readDocuments(target));
    }
  }
  for (const [i, p] of list(k.patches).entries()) {
    const where = join("patches", i);
    if (typeof p?.path === "string") out.files.add(path.resolve(dir, p.path));
    if (!isMap(p) || typeof p.path !== "string" || Object.keys(p).length !== 1) {
      fail(file, who, where, "only patches by path alone (no target, no inline patch) are rendered here");
      continue;
    }
    const patchFile = path.resolve(dir, p.path);
    if (!existsSync(patchFile)) continue; // checkKustomization reports it
    for (const patch of readDocuments(patchFile)) {
      if (!isMap(patch)) {
        fail(patchFile, null, "", "a patch must be a mapping");
        continue;
      }
      const i = out.docs.findIndex((d) => isMap(d) && sameResource(d, patch));
      if (i < 0) {
        fail(patchFile, patch, "", "patches no resource of the kustomization");
      } else if (patch.$patch === "delete") {
        out.docs.splice(i, 1);
      } else {
        out.docs[i] = mergePatch(out.docs[i], patch, { file: patchFile, resource: patch, where: "" });
      }
    }
  }
  return out;
}

// A value with its keys sorted, as JSON: equal for equal manifests.
function canonical(x) {
  if (Array.isArray(x)) return `[${x.map(canonical).join(",")}]`;
  if (isMap(x)) return `{${Object.keys(x).sort().map((k) => `${JSON.stringify(k)}:${canonical(x[k])}`).join(",")}}`;
  return JSON.stringify(x);
}

// Where two values first differ.
function firstDifference(a, b, where = "") {
  if (canonical(a) === canonical(b)) return null;
  if (Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
    for (let i = 0; i < a.length; i++) {
      const d = firstDifference(a[i], b[i], join(where, i));
      if (d) return d;
    }
  }
  if (isMap(a) && isMap(b)) {
    for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
      const d = firstDifference(a[k], b[k], join(where, k));
      if (d) return d;
    }
  }
  return where || "(document)";
}

// Compares the rendering with kubectl's. Returns whether it could.
function compareWithKubectl(dir, docs) {
  const file = kustomizationIn(dir);
  const run = spawnSync("kubectl", ["kustomize", dir], { encoding: "utf8", timeout: 120_000 });
  if (run.error?.code === "ENOENT") return false;
  if (run.error || run.status !== 0) {
    const last = (run.stderr || run.error?.message || "").trim().split("\n").pop();
    const why = /err="(.*)"$/.exec(last)?.[1] ?? last;
    fail(file, null, "", `kubectl kustomize refuses it: ${why}`);
    return true;
  }
  const theirs = parseAllDocuments(run.stdout, YAML_OPTIONS).map((d) => d.toJS()).filter((d) => d);
  const ours = docs.filter((d) => isMap(d));
  const name = (d) => `${d.kind}/${d.metadata?.name}`;
  for (const t of theirs) {
    const o = ours.find((d) => sameResource(d, t));
    if (!o) {
      fail(file, t, "", "kubectl kustomize renders it, this validator does not");
      continue;
    }
    const where = firstDifference(o, t);
    if (where) fail(file, t, where, `rendered differently from kubectl kustomize (this validator's rendering is wrong: fix it)`);
  }
  for (const o of ours) {
    if (!theirs.some((t) => sameResource(t, o))) fail(file, o, "", `rendered here but not by kubectl kustomize (${name(o)})`);
  }
  return true;
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
    const volumes = new Set(list(pod.volumes).map((v) => v?.name));
    for (const [i, c] of list(pod.containers).entries()) {
      for (const [j, m] of list(c?.volumeMounts).entries()) {
        if (!volumes.has(m?.name)) {
          fail(d.file, d.doc, `${base}.containers[${i}].volumeMounts[${j}]`, `no volume ${m?.name} in the pod`);
        }
      }
    }
    if (pod.serviceAccountName && !findIn("ServiceAccount", pod.serviceAccountName, ns)) {
      fail(d.file, d.doc, `${base}.serviceAccountName`, `no ServiceAccount ${ns}/${pod.serviceAccountName} among the manifests`);
    }
  }

  // Environment variables as Kubernetes reads them: a value or a source,
  // never both (the API server refuses it; a patch that adds valueFrom must
  // delete value), and $(NAME) expands only a name defined earlier in the
  // list (otherwise it stays literal text).
  for (const d of checked("Deployment")) {
    for (const [i, c] of list(d.doc.spec?.template?.spec?.containers).entries()) {
      const defined = new Set();
      for (const [j, e] of list(c?.env).entries()) {
        const where = `spec.template.spec.containers[${i}].env[${j}]`;
        if (e?.value !== undefined && e?.valueFrom !== undefined) {
          fail(d.file, d.doc, where, "sets both value and valueFrom");
        }
        for (const [, name] of String(e?.value ?? "").matchAll(/(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
          if (!defined.has(name)) {
            fail(d.file, d.doc, join(where, "value"), `$(${name}) is not defined earlier in env, so it stays literal`);
          }
        }
        defined.add(e?.name);
      }
    }
  }

  // The controller. On a SQLite file (one writer): one replica, replaced by
  // Recreate. On PostgreSQL, several replicas elect a leader, and only the
  // leader is Ready (its /readyz answers 200), which the Service, the
  // rollout and the disruption budget must allow for.
  const scaled = (v, total) =>
    typeof v === "string" && v.endsWith("%") ? Math.ceil((total * parseFloat(v)) / 100) : Number(v);
  const selects = (selector, labels) => {
    const sel = map(selector);
    if (sel.matchExpressions) return undefined; // not evaluated here
    return Object.entries(map(sel.matchLabels)).every(([k, v]) => map(labels)[k] === v);
  };
  for (const d of checked("Deployment")) {
    const spec = map(d.doc.spec);
    const containers = list(spec.template?.spec?.containers);
    const i = containers.findIndex((c) => list(c?.env).some((e) => e?.name === "COALMINE_DB"));
    if (i < 0) continue;
    const c = containers[i];
    const at = `spec.template.spec.containers[${i}]`;
    const env = (name) => list(c.env).find((e) => e?.name === name);
    const db = env("COALMINE_DB");
    const postgres = db.valueFrom?.secretKeyRef !== undefined || /^postgres(ql)?:\/\//.test(String(db.value ?? ""));
    const replicas = spec.replicas ?? 1;
    const strategy = map(spec.strategy);
    const type = strategy.type ?? "RollingUpdate";
    if (!postgres) {
      if (replicas !== 1) {
        fail(d.file, d.doc, "spec.replicas", "COALMINE_DB is a SQLite file, which has one writer: 1 (several need PostgreSQL)");
      }
      if (type !== "Recreate") {
        fail(d.file, d.doc, "spec.strategy.type",
          "COALMINE_DB is a SQLite file: Recreate, so that the old pod lets go of it before the new one opens it");
      }
      continue;
    }
    if (replicas <= 1) continue;
    if (!env("COALMINE_PUBLIC_URL")) {
      fail(d.file, d.doc, join(at, "env"),
        "several replicas: set COALMINE_PUBLIC_URL to each pod's own address (a follower names the leader by it)");
    }
    if (c.readinessProbe?.httpGet?.path !== "/readyz") {
      fail(d.file, d.doc, join(at, "readinessProbe"),
        "several replicas: probe /readyz, so that only the leader is Ready and the Service sends it the syncs");
    }
    if (type === "RollingUpdate") {
      const maxUnavailable = scaled(strategy.rollingUpdate?.maxUnavailable ?? "25%", replicas);
      if (!(maxUnavailable >= replicas)) {
        fail(d.file, d.doc, "spec.strategy.rollingUpdate.maxUnavailable",
          "only the leader is Ready: a rolling update that keeps a pod available never ends " +
          "(a new pod is Ready only once it leads, after the old leader is gone): 100%");
      }
    }
    const labels = spec.template?.metadata?.labels;
    for (const pdb of checked("PodDisruptionBudget")) {
      if (namespaceOf(pdb) !== namespaceOf(d) || !selects(pdb.doc.spec?.selector, labels)) continue;
      const budget = map(pdb.doc.spec);
      const desired = budget.maxUnavailable !== undefined
        ? Math.max(0, replicas - scaled(budget.maxUnavailable, replicas))
        : budget.minAvailable !== undefined ? scaled(budget.minAvailable, replicas) : 0;
      if (desired > 0) {
        fail(pdb.file, pdb.doc, "spec",
          `wants ${desired} of the ${replicas} pods Ready, but only the leader ever is: the leader could never be ` +
          "evicted and a drain of its node would wait forever (maxUnavailable: 100%)");
      }
    }
  }

  // A disruption budget covers pods among the manifests.
  for (const pdb of checked("PodDisruptionBudget")) {
    const covers = all("Deployment").map((d) =>
      namespaceOf(d) === namespaceOf(pdb) ? selects(pdb.doc.spec?.selector, d.doc.spec?.template?.metadata?.labels) : false);
    if (!covers.some((x) => x !== false)) {
      fail(pdb.file, pdb.doc, "spec.selector", "selects no Deployment's pods among the manifests");
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

// Every resource of the files given, checked on its own.
async function validateFiles(list) {
  const out = [];
  for (const file of list) {
    for (const doc of readDocuments(file)) {
      const checked = await validateResource(file, doc);
      if (checked) out.push({ file, doc, clean: checked.clean });
    }
  }
  return out;
}

const resources = [];
const overlays = [];
let files = 0;
for (const target of targets) {
  if (!existsSync(target)) {
    fail(target, null, "", "does not exist");
    continue;
  }
  if (isOverlay(target)) {
    overlays.push(target);
    continue;
  }
  for (const file of yamlFilesUnder(target)) {
    if (KUSTOMIZATION.has(path.basename(file))) {
      checkKustomization(file);
      continue;
    }
    files += 1;
    resources.push(...(await validateFiles([file])));
  }
}
crossChecks(resources);

// Each overlay as it is applied: its rendering, the files beside it and its
// bases that no kustomization lists (the Secret examples), and the other
// manifests given (Istio's, for the checks across them), instead of its
// bases' files.
let rendered = 0;
let compared = 0;
for (const dir of overlays) {
  const file = kustomizationIn(dir);
  checkKustomization(file);
  const build = render(dir);
  if (!build) continue;
  if (compareWithKubectl(dir, build.docs)) compared += 1;
  const variant = [];
  for (const doc of build.docs) {
    const checked = await validateResource(file, doc);
    if (checked) variant.push({ file, doc, clean: checked.clean });
  }
  rendered += variant.length;
  const beside = [...build.dirs].flatMap((d) => yamlFilesUnder(d))
    .filter((f) => !build.files.has(f) && !KUSTOMIZATION.has(path.basename(f)));
  files += yamlFilesUnder(dir).filter((f) => !KUSTOMIZATION.has(path.basename(f))).length;
  variant.push(...(await validateFiles(beside)));
  const inside = (f) => [...build.dirs].some((d) => path.dirname(f) === d);
  variant.push(...resources.filter((r) => !inside(r.file)));
  crossChecks(variant);
}

// An overlay's checks see the files its bases share with the others: report
// what they find once.
const reported = [...new Set(errors)];
if (reported.length) {
  for (const e of reported) console.error(e);
  console.error(`manifests: ${reported.length} error(s)`);
  process.exit(1);
}
const summary = overlays.length
  ? `, ${overlays.length} overlay${overlays.length > 1 ? "s" : ""} rendering ${rendered} resources` +
    (compared === overlays.length ? " as kubectl kustomize does" : " (kubectl not found: the rendering is not compared)")
  : "";
console.log(`manifests: ${resources.length} resources in ${files} files${summary} ok`);
