"""Setup shared by the tests of sharded arrays."""

from __future__ import annotations

from typing import Any

import zarr
from zarr.abc.store import Store

OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}


def new_array(
    store: Store,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    pipeline: dict[str, str] | None = None,
    **kwargs: Any,
) -> zarr.Array[Any]:
    """A new array in ``store``: int32, fill value 0 and no compressor unless
    ``kwargs`` (more ``zarr.create_array`` arguments) say otherwise. The array
    keeps the codec pipeline that the zarr config ``pipeline`` names (zarr's
    default if None)."""
    options: dict[str, Any] = {"dtype": "i4", "fill_value": 0, "compressors": None, **kwargs}
    with zarr.config.set(pipeline or {}):
        return zarr.create_array(store, shape=shape, chunks=chunks, **options)
