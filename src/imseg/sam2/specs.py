"""Names, configs and official download locations of the SAM 2.1 checkpoints (imports nothing heavy).

The sha256 of the official files is not recorded here (``None``): they were not downloaded while
writing this table.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class Sam2Spec:
    name: str  #: registry name
    variant: str  #: key of imseg.sam2.config.CONFIGS
    config_file: str  #: official config name
    filename: str  #: official checkpoint file name
    url: str
    sha256: str | None = None


SPECS: dict[str, Sam2Spec] = {
    spec.name: spec
    for spec in (
        Sam2Spec(f"sam2.1-hiera-{short}", variant, f"configs/sam2.1/sam2.1_{variant}.yaml", filename,
                 f"{BASE_URL}/{filename}")
        for short, variant, filename in (
            ("t", "hiera_t", "sam2.1_hiera_tiny.pt"),
            ("s", "hiera_s", "sam2.1_hiera_small.pt"),
            ("b+", "hiera_b+", "sam2.1_hiera_base_plus.pt"),
            ("l", "hiera_l", "sam2.1_hiera_large.pt"),
        )
    )
}

#: registry model name of each variant (for messages: ``imseg weights download NAME``)
VARIANT_MODEL_NAMES = {spec.variant: spec.name for spec in SPECS.values()}
