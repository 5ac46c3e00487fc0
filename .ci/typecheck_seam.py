"""Checked by .ci/typecheck (never run): the seams between the packages are typed, not ``Any``.

If the installed layout stops being visible to mypy, ``fgsearch.indexes`` becomes ``Any`` and every
``assert_type`` below fails.
"""

from __future__ import annotations

from typing_extensions import assert_type

from fgsearch.console import cli
from fgsearch.indexes import Backend, VectorIndex, get_backend, open_index
from fgsearch.indexes.exact import ExactBackend, ExactIndex
from fgsearch.indexes.faiss import FaissBackend, FaissIndex
from fgsearch.indexes.pgvector import PgvectorBackend, PgvectorIndex
from fgsearch.indexes.qdrant import QdrantBackend, QdrantIndex
from fgsearch.trainer import TrainConfig

assert_type(get_backend("faiss"), Backend)
assert_type(open_index("exact", "/tmp/x"), VectorIndex)
assert_type(FaissBackend().index_class(), type[FaissIndex])
assert_type(ExactBackend().index_class(), type[ExactIndex])
assert_type(QdrantBackend().create_index(None, 8, None), VectorIndex)
assert_type(QdrantIndex.open(None), QdrantIndex)  # type: ignore[arg-type]
assert_type(PgvectorBackend().create_index(None, 8, None), VectorIndex)
assert_type(PgvectorIndex.open(None), PgvectorIndex)  # type: ignore[arg-type]
assert_type(cli.main(), None)
assert_type(TrainConfig(data="d", out="o").out, str)
