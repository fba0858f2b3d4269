"""The options ``verify`` shares with the pipeline: those of every cache read, and the pixel
limit of the images it decodes (replayed and recomputed views)."""

from dataclasses import dataclass

from kdcache.pipeline.data import CacheReadConfig
from kdcache.pipeline.views import max_pixels_option


@dataclass(frozen=True)
class VerifyConfig(CacheReadConfig):
    """``verify``'s config options."""

    max_pixels: int = max_pixels_option()
