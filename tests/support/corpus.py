"""Small corpora on disk, in each format the data pipeline reads (text, jsonl, parquet)."""

from __future__ import annotations

import json


def write_documents(tmp_path, fmt: str, n: int = 120):
    """`n` short documents written as `fmt` (text | json | parquet) under `tmp_path`; returns (path, documents)."""
    docs = [f"Document number {i} speaks of item{i} and of nothing else at all." for i in range(n)]
    if fmt == "text":
        path = tmp_path / "corpus.txt"
        path.write_text("\n".join(docs) + "\n")
    elif fmt == "json":
        path = tmp_path / "corpus.jsonl"
        path.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "corpus.parquet"
        pq.write_table(pa.table({"body": docs}), path)
    return path, docs
