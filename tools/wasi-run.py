"""Runs a wasm32-wasip1 program (a cargo test binary) under Wasmtime.

Cargo calls this as the wasm32-wasip1 test runner (see the Makefile), so the
pure core's tests run with 32-bit `usize` exactly as the filter does in a proxy.
The filter's tests import the proxy-wasm host calls without calling them; the
imports are defined as traps, so a test that did call one would fail loudly.
The exit code of the program is passed through.
"""

import sys

from wasmtime import Engine, ExitTrap, Linker, Module, Store, WasiConfig


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: wasi-run.py <program.wasm> [args...]", file=sys.stderr)
        return 2
    wasm, args = sys.argv[1], sys.argv[1:]
    engine = Engine()
    linker = Linker(engine)
    linker.define_wasi()
    wasi = WasiConfig()
    wasi.argv = args
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.inherit_env()
    store = Store(engine)
    store.set_wasi(wasi)
    module = Module.from_file(engine, wasm)
    linker.define_unknown_imports_as_traps(module)
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except ExitTrap as exit:
        return exit.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
