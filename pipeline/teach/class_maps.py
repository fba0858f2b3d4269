"""Named class maps: data whose classes are WordNet ids (an ImageNet-style folder: ``n02123045``)
mapped to a teacher's ImageNet classes by timm's ImageNet metadata, for teachers of ImageNet-1k
(1000 classes), -12k (11821), -21k/22k (21841, 21842, 21843) or -21k-miil (11221).

The data's class names are checked before the teacher loads (:func:`check_named`); the map is
made once the teacher's class count is known (:func:`named_class_map`)."""

import re

from kdcache.errors import ConfigError

NAMED = ("imagenet",)
WORDNET_ID = re.compile(r"n\d{8}")
FIELD = "teacher.class_map"


def check_named(name: str, classes: list[str]) -> None:
    """Refuse a map name kdcache does not know, or data classes that are not WordNet ids."""
    if name not in NAMED:
        raise ConfigError(
            f"{FIELD}: {name!r} is neither a named class map ({', '.join(NAMED)}) nor a list "
            "of teacher class ids",
            field=FIELD,
        )
    named = [c for c in classes if not WORDNET_ID.fullmatch(c)]
    if named:
        raise ConfigError(
            f"{FIELD} {name}: data class {named[0]!r} is not a WordNet id like n02123045 "
            f"({len(named)} of {len(classes)} classes are not); name the class folders by "
            "WordNet id, or give the teacher class id of each data class",
            field=FIELD,
        )


def named_class_map(name: str, classes: list[str], teacher_classes: int, location: str) -> tuple:
    """The teacher class id of each data class under the map ``name`` (see :data:`NAMED`)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    check_named(name, classes)
    subset = infer_imagenet_subset({"num_classes": teacher_classes})
    if subset is None:
        raise ConfigError(
            f"{FIELD} {name}: {location}'s {teacher_classes} classes are not an ImageNet "
            "label set timm knows (1000, 11221, 11821, 21841, 21842, 21843)",
            field=FIELD,
        )
    index = {label: i for i, label in enumerate(ImageNetInfo(subset).label_names())}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ConfigError(
            f"{FIELD} {name}: data class {missing[0]} is not among {subset}'s classes "
            f"({len(missing)} of {len(classes)} missing)",
            field=FIELD,
        )
    return tuple(index[c] for c in classes)
