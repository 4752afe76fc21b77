"""A clear error for an image of the wrong dimensionality (a 2D radiograph sent to a 3D bundle, a CT volume
sent to a 2D bundle), raised right after loading, before a transform fails on it with a message about axes.

The error is a ``ValueError``. Where Starlette is installed it is also Starlette's ``HTTPException`` (status
422), so a web server built on it answers with the message: MONAI Label (FastAPI) answers every other
exception of a bundle's transforms with a bare "Internal Server Error".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.transforms import MapTransform

try:
    from starlette.exceptions import HTTPException
except ImportError:  # no web framework: the error is a plain ValueError
    HTTPException = None

_HTTP_BASES = (HTTPException,) if HTTPException is not None else ()


class SpatialDimsError(ValueError, *_HTTP_BASES):
    """An image whose number of spatial dimensions is not the pipeline's (HTTP 422 under Starlette)."""

    status = 422

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        if _HTTP_BASES:
            HTTPException.__init__(self, status_code=self.status, detail=message)

    __str__ = ValueError.__str__
    __repr__ = ValueError.__repr__


class EnsureSpatialDimsd(MapTransform):
    """Raise :class:`SpatialDimsError` when a loaded channel-first image of ``keys`` does not have
    ``spatial_dims`` spatial dimensions; the message names the file, its shape and the expected dims."""

    def __init__(self, keys, spatial_dims: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            found = image.ndim - 1
            if found != self.spatial_dims:
                meta = getattr(image, "meta", {})
                name = meta.get("filename_or_obj", f"the {key!r} entry")
                raise SpatialDimsError(
                    f"{name}: a {found}D image (shape {tuple(image.shape[1:])} after the channel axis), but "
                    f"the bundle expects {self.spatial_dims}D images (spatial_dims={self.spatial_dims})"
                )
        return d
