//! `coalmine-wasm-exports IN OUT NAME...`: writes IN to OUT without the
//! exports named (their functions stay, unexported: nothing but the export
//! section is rewritten).
//!
//! A proxy-wasm host calls a module's callback only when the module exports
//! it (without `proxy_on_done`, a finished request is done without
//! entering the VM). The SDK exports every callback it knows; `make
//! build-wasm` passes the empty filter through this to build the lean empty
//! filter, the benchmarks' floor with only the callbacks coalmine takes.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeSet;
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// The module without the exports in `drop`; an error if one of them is
/// not exported at all (a misspelt name must not pass silently).
fn drop_exports(wasm: &[u8], drop: &BTreeSet<&str>) -> Result<Vec<u8>> {
    let mut module = Module::new();
    let mut found = BTreeSet::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.context("reading the module")?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.context("reading an export")?;
                if drop.contains(export.name) {
                    found.insert(export.name);
                    continue;
                }
                let kind = match export.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                    ExternalKind::Table => ExportKind::Table,
                    ExternalKind::Memory => ExportKind::Memory,
                    ExternalKind::Global => ExportKind::Global,
                    ExternalKind::Tag => ExportKind::Tag,
                };
                exports.export(export.name, kind, export.index);
            }
            module.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            let (start, end) = (usize::try_from(range.start)?, usize::try_from(range.end)?);
            let data = wasm
                .get(start..end)
                .context("a section beyond the module's end")?;
            module.section(&RawSection { id, data });
        }
    }
    let missing: Vec<_> = drop.difference(&found).collect();
    if !missing.is_empty() {
        bail!("not exported by the module: {missing:?}");
    }
    Ok(module.finish())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, names @ ..] = args.as_slice() else {
        bail!("usage: coalmine-wasm-exports IN OUT NAME...");
    };
    let wasm = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let drop: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let trimmed = drop_exports(&wasm, &drop).with_context(|| input.clone())?;
    // A new file, renamed into place: OUT may be a hard link to a build
    // artifact, which must not change.
    let tmp = format!("{output}.tmp");
    std::fs::write(&tmp, &trimmed).with_context(|| format!("writing {tmp}"))?;
    std::fs::rename(&tmp, output).with_context(|| format!("renaming {tmp} to {output}"))?;
    println!(
        "{output}: {} export(s) dropped ({} bytes)",
        drop.len(),
        trimmed.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{CodeSection, Function, FunctionSection, Instruction, TypeSection};

    /// A module exporting `names`, each a function that does nothing.
    fn module(names: &[&str]) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        names.iter().for_each(|_| {
            funcs.function(0);
        });
        m.section(&funcs);
        let mut exports = ExportSection::new();
        for (i, n) in names.iter().enumerate() {
            exports.export(n, ExportKind::Func, u32::try_from(i).unwrap());
        }
        m.section(&exports);
        let mut code = CodeSection::new();
        for _ in names {
            let mut f = Function::new([]);
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        m.section(&code);
        m.finish()
    }

    fn exports(wasm: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::ExportSection(r) = payload.unwrap() {
                names.extend(r.into_iter().map(|e| e.unwrap().name.to_string()));
            }
        }
        names
    }

    #[test]
    fn only_the_named_exports_go_and_the_module_stays_valid() {
        let wasm = module(&["proxy_on_log", "proxy_on_done", "proxy_on_request_body"]);
        let drop = BTreeSet::from(["proxy_on_done", "proxy_on_request_body"]);
        let trimmed = drop_exports(&wasm, &drop).unwrap();
        assert_eq!(exports(&trimmed), ["proxy_on_log"]);
        wasmparser::Validator::new().validate_all(&trimmed).unwrap();
    }

    #[test]
    fn a_name_not_exported_is_an_error() {
        let wasm = module(&["proxy_on_log"]);
        let err = drop_exports(&wasm, &BTreeSet::from(["proxy_on_dne"])).unwrap_err();
        assert!(err.to_string().contains("proxy_on_dne"), "{err}");
    }
}
