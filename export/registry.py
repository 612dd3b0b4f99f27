"""The exporter registry: format name -> exporter instance, for every format of the format
table (`edgeprune.devices.formats`) that names an exporter, filled here explicitly (no import
side effects). Tests and callers may adjust an instance's tolerances."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from edgeprune.devices.formats import FORMATS
from edgeprune.errors import EdgepruneError
from edgeprune.export.base import Exporter
from edgeprune.export.onnx import OnnxExporter
from edgeprune.export.tflite import TFLiteExporter

_BUILT: dict[str, Exporter] = {e.name: e for e in (OnnxExporter(), TFLiteExporter())}
EXPORTERS: dict[str, Exporter] = {name: _BUILT[f.exporter]
                                  for name, f in sorted(FORMATS.items()) if f.exporter}
"""Every format of `edgeprune.devices.formats.FORMATS` that has an exporter, by name."""


def select_exporters(formats: Sequence[str]) -> list[Exporter]:
    """The exporters for `formats` (names, or one 'onnx,tflite' string), in order and without
    repeats; an unknown name raises EdgepruneError with the closest known name."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    known = ", ".join(EXPORTERS)
    if not names:
        raise EdgepruneError(f"no export format given; choose from {known}")
    for name in names:
        if name not in EXPORTERS:
            close = difflib.get_close_matches(str(name), list(EXPORTERS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EdgepruneError(f"unknown export format {name!r}{hint} (choose from {known})")
    return [EXPORTERS[name] for name in dict.fromkeys(names)]
