"""Model files whose bytes depend on the model alone, so DVC sees one model where training made one.

Keras writes into a ``.keras`` zip the time of saving (``metadata.json``'s ``date_saved``
and the weights entry's timestamp) and numbers shared objects, such as a layer's dtype
policy, by their memory address (``shared_object_id`` in ``config.json``). The same
weights saved in two processes therefore differ byte for byte, and ``models/<variant>``
would get a new DVC hash in every clone. ``make_reproducible`` rewrites a saved file
without the save date, with fixed entry times and with shared objects numbered in the
order they first appear; Keras matches shared objects by their number only, so the file
loads as before.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from retinaseg.core.atomic import atomic_path

#: The earliest time a zip entry can hold; every entry gets it.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SHARED_ID = re.compile(rb'"shared_object_id": (\d+)')


def make_reproducible(path: Path) -> None:
    """Rewrite the ``.keras`` file at ``path`` so that equal models give equal bytes (atomically)."""
    with zipfile.ZipFile(path) as saved:
        entries = [(info, saved.read(info)) for info in saved.infolist()]
    with atomic_path(Path(path)) as tmp, zipfile.ZipFile(tmp, "w") as rewritten:
        for info, data in entries:
            if info.filename == "metadata.json":
                data = _without_date(data)
            elif info.filename == "config.json":
                data = renumber_shared_objects(data)
            entry = zipfile.ZipInfo(info.filename, ZIP_EPOCH)
            entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
            rewritten.writestr(entry, data)


def renumber_shared_objects(config: bytes) -> bytes:
    """Replace every ``shared_object_id`` by 1, 2, ... in order of first appearance (the same id, the same number)."""
    numbers: dict[bytes, int] = {}

    def number(match: re.Match) -> bytes:
        return b'"shared_object_id": %d' % numbers.setdefault(match.group(1), len(numbers) + 1)

    return _SHARED_ID.sub(number, config)


def _without_date(metadata: bytes) -> bytes:
    fields = json.loads(metadata)
    fields.pop("date_saved", None)
    return json.dumps(fields).encode()
