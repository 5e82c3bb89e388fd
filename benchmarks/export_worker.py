"""Worker for bench_export.py: one export in a fresh process. `python export_worker.py SOURCE OUT DTYPE` prints
"<shared> <loaded> <peak>" in bytes: the resident size after the imports, the bytes of the model's tensors as
loaded, and the peak resident size during the export (Linux's counter reset after the imports)."""

from __future__ import annotations

import resource
import sys

from memory_worker import _malloc_trim, _reset_peak, _status_bytes

from llava.distributed.state import exit_process


def main() -> None:
    import llava.export.convert as convert
    from llava.model.builder import load_pretrained_model  # noqa: F401  (imported by the export: shared)

    source, out, dtype = sys.argv[1:4]
    loaded = {}
    original_load = convert.load_pretrained_model

    def measuring_load(*args, **kwargs):
        result = original_load(*args, **kwargs)
        loaded["bytes"] = sum(t.numel() * t.element_size() for t in result[1].state_dict().values())
        return result

    convert.load_pretrained_model = measuring_load
    _malloc_trim()
    shared = _status_bytes("VmRSS")
    reset = _reset_peak()
    convert.export(convert.ExportOptions(model_path=source, save_model_path=out, dtype=dtype, conv_mode="llava_v1"))
    peak = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(shared, loaded["bytes"], peak)


if __name__ == "__main__":
    main()
    exit_process()
