"""What two ingredients' hyper-parameters differ in: the colour of a pair in the angle figure
(the paper's Fig. 3 sorts pairs into seed only, learning rate, augmentation...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raysoup.search.distributions import Choice


def difference_label(a: Mapping[str, Any], b: Mapping[str, Any],
                     space: Mapping[str, Any]) -> str:
    """"seed only", the differing `choice` hyper-parameters (augmentation, label smoothing...:
    the discrete decisions) joined by "+", or else the differing continuous ones."""
    differ = [k for k in sorted(space) if a.get(k) != b.get(k)]
    if not differ:
        return "same hyper-parameters"
    varied = [k for k in differ if k != "seed"]
    if not varied:
        return "seed only"
    discrete = [k for k in varied if isinstance(space[k], Choice)]
    return "+".join(discrete or varied)
