"""Which kernels run here and why: cnnkit's version, the active backend (NumPy or oneDNN) and the
reason, the oneDNN library found (version, instruction set, path), threads and activation layout."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


# dnnl_cpu_isa_t values of oneDNN v3.2 (dnnl_types.h)
ISA_NAMES = {0x0: "default", 0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xF: "avx2_vnni", 0x1F: "avx2_vnni_2",
             0x27: "avx512_core", 0x67: "avx512_core_vnni", 0xE7: "avx512_core_bf16",
             0x1E7: "avx512_core_fp16", 0x3E7: "avx512_core_amx", 0x7E7: "avx512_core_amx_fp16"}


def collect() -> dict:
    """Everything ``cnnkit info`` reports, as a dict."""
    import os
    import platform

    import numpy as np

    from .. import __version__, backend
    from ..functional import onednn, parallel

    name, why = backend.active_backend()
    ok, detail = onednn.status()
    info = {
        "cnnkit": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backend_setting": backend.get_backend(),
        "active_backend": name,
        "why": why,
        "onednn": {"available": ok, "detail": detail},
        "threads": parallel.num_threads(),
        "threads_from": "CNNKIT_NUM_THREADS" if os.environ.get("CNNKIT_NUM_THREADS") else "the CPU count",
    }
    if ok:
        from ..functional.onednn import layout, library, runtime

        lib = library.lib()
        info["onednn"].update(version=".".join(map(str, lib.version)), path=lib.path,
                              isa=ISA_NAMES.get(lib.isa, hex(lib.isa)), openmp_threads=runtime.openmp_threads(),
                              activation_layout=layout.activation_layout())
    return info


def run(args) -> int:
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=1))
        return 0
    dnnl = info["onednn"]
    lines = [
        f"cnnkit {info['cnnkit']} (Python {info['python']}, NumPy {info['numpy']})",
        f"backend: {info['active_backend']} ({info['why']})",
    ]
    if dnnl["available"]:
        lines += [
            f"oneDNN: {dnnl['version']}, {dnnl['isa']} kernels, {dnnl['openmp_threads']} OpenMP threads, "
            f"from {dnnl['path']}",
            f"activation layout between oneDNN layers: {dnnl['activation_layout']}",
        ]
    else:
        lines.append(f"oneDNN: not available ({dnnl['detail']})")
    lines.append(f"threads for NumPy kernels: {info['threads']} (from {info['threads_from']})")
    print("\n".join(lines))
    return 0
