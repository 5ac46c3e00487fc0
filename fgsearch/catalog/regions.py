"""Region rows of the catalog: the boxes of each image, looked up the ways a search needs them.

Each ``regions`` row id is a region-vector id. A search scores every region of its candidate
images (:meth:`RegionRows.region_ids_by_content`, :meth:`RegionRows.region_arrays`: numpy arrays,
no per-row objects) and builds a :class:`~fgsearch.boxes.Box` only for the regions it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fgsearch.boxes import Box
from fgsearch.catalog.connect import SqlStore, chunks, marks


def _groups(keys: Any) -> list[tuple[int, int, int]]:
    """``(key, start, end)`` of each run of equal consecutive ``keys`` (a 1-D int array)."""
    import numpy as np

    if not len(keys):
        return []
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    return [(int(keys[a]), int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


class RegionRows(SqlStore):
    """Region lookups of one catalog."""

    def region_ids_of(self, content_ids: Sequence[int]) -> list[int]:
        return [r[0] for r in self.select_in("SELECT id FROM regions WHERE content_id IN ({marks})", content_ids)]

    def region_id_array(self, content_ids: Sequence[int]) -> Any:
        """The region ids of ``content_ids`` as int64 (in no order): a filter's allowed set, up to
        hundreds of thousands of ids. SQLite gives each chunk's ids as one text (``group_concat``)
        instead of a row per id: 500,000 ids in ~70 ms where rows took ~1.1 s (bench_query.py)."""
        import numpy as np

        if self.pg:
            return np.asarray(self.region_ids_of(content_ids), np.int64)
        parts = [np.zeros(0, np.int64)]
        with self.reading() as con:
            for chunk in chunks([int(i) for i in content_ids]):
                sql = f"SELECT group_concat(id) FROM regions WHERE content_id IN ({marks(len(chunk))})"
                text = con.execute(sql, chunk).fetchone()[0]
                if text:
                    parts.append(np.fromstring(text, dtype=np.int64, sep=","))
        return np.concatenate(parts)

    def contents_of_regions(self, region_ids: Sequence[int]) -> list[int]:
        """Content ids owning the given regions, unique, in the order of first appearance."""
        owner = dict(self.select_in("SELECT id, content_id FROM regions WHERE id IN ({marks})", region_ids))
        seen: dict[int, None] = {}
        for rid in region_ids:
            if rid in owner:
                seen.setdefault(owner[rid], None)
        return list(seen)

    def region_owners(self) -> tuple[Any, Any, Any]:
        """Every region id (ascending), the content id owning each and its rank, as int64 arrays."""
        import numpy as np

        with self.reading() as con:
            rows = con.execute("SELECT id, content_id, rank FROM regions ORDER BY id").fetchall()
        arr = np.asarray(rows, np.int64).reshape(-1, 3)
        return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()

    def region_ids_by_content(self, content_ids: Sequence[int]) -> dict[int, Any]:
        """Region ids per content (int64 ``[K]``, rank order): a search scores every region of its
        candidate images and needs the boxes (:meth:`region_boxes`) only of the ones it returns."""
        import numpy as np

        pairs = self.select_in(
            "SELECT content_id, id FROM regions WHERE content_id IN ({marks}) ORDER BY content_id, rank", content_ids
        )
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return {cid: arr[a:b, 1] for cid, a, b in _groups(arr[:, 0])}

    def region_boxes(self, region_ids: Sequence[int]) -> dict[int, Box]:
        """The box of each known region id (float32 values, as :meth:`region_arrays` gives them)."""
        import numpy as np

        rows = self.select_in("SELECT id, x1, y1, x2, y2 FROM regions WHERE id IN ({marks})", region_ids)
        return {rid: Box.clipped(*np.asarray(xy, np.float32).tolist()) for rid, *xy in rows}

    def regions_for_contents(self, content_ids: Sequence[int]) -> dict[int, list[tuple[int, Box]]]:
        """Region ids and boxes per content, in rank order."""
        return {
            cid: [(int(r), Box(*map(float, b))) for r, b in zip(rids, boxes, strict=True)]
            for cid, (rids, boxes) in self.region_arrays(content_ids).items()
        }

    def region_arrays(self, content_ids: Sequence[int]) -> dict[int, tuple[Any, Any]]:
        """Like :meth:`regions_for_contents` as arrays (int64 ids ``[K]``, float32 boxes ``[K, 4]``):
        the fast path for search, which builds a Box only for the regions it returns."""
        import numpy as np

        rows = self.select_in(
            "SELECT content_id, id, x1, y1, x2, y2 FROM regions WHERE content_id IN ({marks}) "
            "ORDER BY content_id, rank",
            content_ids,
        )
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return {
            cid: (arr[a:b, 1].astype(np.int64), arr[a:b, 2:6].astype(np.float32))
            for cid, a, b in _groups(arr[:, 0].astype(np.int64))
        }

    def region_owners_and_boxes(self, region_ids: Sequence[int]) -> dict[int, tuple[int, Box]]:
        """Per known region id, its content id and its box (the stored float values)."""
        rows = self.select_in("SELECT id, content_id, x1, y1, x2, y2 FROM regions WHERE id IN ({marks})", region_ids)
        return {rid: (cid, Box(x1, y1, x2, y2)) for rid, cid, x1, y1, x2, y2 in rows}
